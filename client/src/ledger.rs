//! The ledger's wire contract ([`v1`], generated from `proto/txpipe/ledger/v1/ledger.proto`),
//! its sharding rule ([`Partitioning`]) and a client ([`LedgerClient`]) that maps account ids
//! to shards, splits batches per shard and follows each shard's leader.
//!
//! A shard is the Raft group `ledger-<i>` ([`shard_name`]); the broker cluster is created
//! with a shard count and a [`Partitioning`], fixed for its life.
//!
//! A transfer whose accounts live on two shards is run by [`LedgerClient::create_transfers`]
//! as a two-phase commit (docs/ledger.md, "Cross-shard transfers"): begin on the debit
//! account's shard (the coordinator), hold both legs through the [clearing
//! accounts](clearing_account), decide once, post or void both legs, complete. Each step is
//! also public ([`LedgerClient::begin_cross`], [`LedgerClient::prepare_legs`],
//! [`LedgerClient::decide_cross`], [`LedgerClient::finish_cross`]) for the brokers'
//! recovery task ([`LedgerClient::recover_shard`]) and for tests that stop a coordinator
//! half-way.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use tonic::Status;
use tonic::transport::Channel;

use crate::connect::ConnectError;
use crate::leader::{LeaderError, LeaderRouter, MIN_ATTEMPT};
use v1::ledger_client::LedgerClient as RawClient;

/// Version 1 of the ledger API.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("txpipe.ledger.v1");
}

/// Prefix of the shards' stream (Raft group) names.
pub const SHARD_PREFIX: &str = "ledger-";

/// Name of shard `i`: `ledger-<i>`.
pub fn shard_name(i: u32) -> String {
    format!("{SHARD_PREFIX}{i}")
}

/// Index of a shard from its name, `None` when `name` is not `ledger-<i>`.
pub fn shard_index(name: &str) -> Option<u32> {
    let n = name.strip_prefix(SHARD_PREFIX)?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok()
}

/// How account ids map to shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// `range:<size>`: ids `1..=size` on shard 0, the next `size` on shard 1, and so on
    /// (seed 004: `range:1000` puts 1–1000, 1001–2000, 2001–3000 on three shards). Ids
    /// outside `1..=shards × size` are hashed as with [`Partitioning::Hash`], so every id has
    /// a shard.
    Range {
        /// Ids per shard (≥ 1).
        size: u64,
    },
    /// A fixed 64-bit mix of the id, modulo the shard count: spreads random (TigerBeetle
    /// style) ids evenly.
    Hash,
}

impl Default for Partitioning {
    fn default() -> Self {
        Partitioning::Range { size: 1000 }
    }
}

impl fmt::Display for Partitioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partitioning::Range { size } => write!(f, "range:{size}"),
            Partitioning::Hash => f.write_str("hash"),
        }
    }
}

impl FromStr for Partitioning {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "hash" {
            return Ok(Partitioning::Hash);
        }
        let bad =
            || format!("ledger partitioning {s:?}: expected `range:<ids per shard>` or `hash`");
        let size = s
            .strip_prefix("range:")
            .ok_or_else(bad)?
            .parse::<u64>()
            .map_err(|_| bad())?;
        if size == 0 {
            return Err(format!(
                "ledger partitioning {s:?}: the range size must be at least 1"
            ));
        }
        Ok(Partitioning::Range { size })
    }
}

/// The 64-bit finaliser of SplitMix64 (Steele, Lea, Flood 2014) over both halves of `id`.
/// Never to change: it decides where accounts live.
fn mix(id: u128) -> u64 {
    let mut z = (id as u64) ^ ((id >> 64) as u64).rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Partitioning {
    /// Shard of account `id` among `shards` (≥ 1).
    pub fn shard_of(&self, id: u128, shards: u32) -> u32 {
        let shards = shards.max(1);
        if let Partitioning::Range { size } = self
            && id >= 1
        {
            let i = (id - 1) / u128::from(*size);
            if i < u128::from(shards) {
                return i as u32;
            }
        }
        (mix(id) % u64::from(shards)) as u32
    }

    /// The operator account of shard `shard`: the smallest id from 2^64 up that lives on it.
    /// `txpipe ledger create-accounts --credit-limit` funds accounts from it (transfers stay
    /// within one shard).
    pub fn operator_account(&self, shard: u32, shards: u32) -> u128 {
        let mut id = 1u128 << 64;
        while self.shard_of(id, shards) != shard {
            id += 1;
        }
        id
    }
}

/// First id of the reserved block of clearing accounts: `[CLEARING_ACCOUNT_BASE,
/// CLEARING_ACCOUNT_BASE + 2^64)` (the high 64 bits `0xffff_ffff_ffff_fffe`). Clients may
/// not create accounts in it (the broker refuses them with INVALID_ARGUMENT).
pub const CLEARING_ACCOUNT_BASE: u128 = 0xffff_ffff_ffff_fffe_u128 << 64;

/// The `code` of every clearing account.
pub const CLEARING_ACCOUNT_CODE: u16 = u16::MAX;

/// The clearing account of `ledger` (currency), the same id on every shard: each shard holds
/// its own account under it, created by the state machine the first time a transfer names
/// it (no limits). A cross-shard transfer goes `x → clearing` on the debit shard and
/// `clearing → y` on the credit shard, so every shard balances on its own, and after a
/// commit the clearing accounts of all shards net to zero.
pub fn clearing_account(ledger: u32) -> u128 {
    CLEARING_ACCOUNT_BASE | u128::from(ledger)
}

/// The fence account of `ledger`: a second reserved account per ledger and shard (like the
/// clearing account, created by the state machine when first named, no limits). Fencing a
/// leg that was never held (see [`LedgerClient::finish_cross`]) holds and voids its id
/// between the clearing account and this one, which can not fail on a limit or a missing
/// account.
pub fn fence_account(ledger: u32) -> u128 {
    CLEARING_ACCOUNT_BASE | (1 << 32) | u128::from(ledger)
}

/// Whether `id` is in the reserved block of clearing accounts.
pub fn is_clearing_account(id: u128) -> bool {
    id >> 64 == CLEARING_ACCOUNT_BASE >> 64
}

/// The ledger of clearing or fence account `id` (`None` when `id` is neither
/// [`clearing_account`] nor [`fence_account`] of a ledger ≠ 0): the state machine creates
/// these accounts on first use.
pub fn clearing_ledger(id: u128) -> Option<u32> {
    if !is_clearing_account(id) {
        return None;
    }
    let low = (id - CLEARING_ACCOUNT_BASE) as u64;
    if low >> 32 > 1 {
        return None;
    }
    Some(low as u32).filter(|l| *l != 0)
}

/// The four transfer ids of a cross-shard transfer's legs, derived from its id alone, so
/// that the coordinator, a retry and the recovery task all use the same ones (and a retry
/// answers `exists` instead of moving money twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegIds {
    /// The hold `x → clearing` on the debit account's shard.
    pub debit_hold: u128,
    /// The post or void of `debit_hold` (one id for both: posting after a void, or the
    /// reverse, answers `exists_with_different_flags`).
    pub debit_resolve: u128,
    /// The hold `clearing → y` on the credit account's shard.
    pub credit_hold: u128,
    /// The post or void of `credit_hold`.
    pub credit_resolve: u128,
}

/// The leg ids of cross-shard transfer `id`: the first 16 bytes (little endian) of
/// SHA-256(`"txpipe-2pc/" + tag + id as 16 little-endian bytes`) for each tag
/// (`debit-hold`, `debit-resolve`, `credit-hold`, `credit-resolve`), with the reserved ids
/// 0 and `u128::MAX` moved to 1 and `u128::MAX - 1`. Never to change: the ids are stored.
pub fn leg_ids(id: u128) -> LegIds {
    let derive = |tag: &str| {
        let mut buf = Vec::with_capacity(32);
        buf.extend_from_slice(b"txpipe-2pc/");
        buf.extend_from_slice(tag.as_bytes());
        buf.extend_from_slice(&id.to_le_bytes());
        let d = ring::digest::digest(&ring::digest::SHA256, &buf);
        let mut b = [0u8; 16];
        b.copy_from_slice(&d.as_ref()[..16]);
        match u128::from_le_bytes(b) {
            0 => 1,
            u128::MAX => u128::MAX - 1,
            v => v,
        }
    };
    LegIds {
        debit_hold: derive("debit-hold"),
        debit_resolve: derive("debit-resolve"),
        credit_hold: derive("credit-hold"),
        credit_resolve: derive("credit-resolve"),
    }
}

/// A `u128` on the wire.
pub fn to_pb(v: u128) -> Option<v1::U128> {
    Some(v1::U128 {
        hi: (v >> 64) as u64,
        lo: v as u64,
    })
}

/// A wire `U128` (absent: 0).
pub fn from_pb(v: Option<&v1::U128>) -> u128 {
    v.map_or(0, |v| (u128::from(v.hi) << 64) | u128::from(v.lo))
}

/// Errors of [`LedgerClient`].
#[derive(Debug, thiserror::Error)]
pub enum LedgerClientError {
    /// No usable broker address.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The broker refused the call, or no leader answered in time.
    #[error(transparent)]
    Leader(#[from] LeaderError),
    /// A batch this client can not run: a cross-shard transfer that is not a plain transfer
    /// (pending, post, void, linked, timeout), or a linked chain that reaches one.
    #[error("{0}")]
    Unsupported(String),
    /// A step of a cross-shard transfer's two-phase commit answered something the protocol
    /// does not allow (a post of a committed leg refused, a malformed record). The
    /// transaction stays open in its coordinator's table for the recovery task.
    #[error("cross-shard transfer {id}: {message}")]
    Cross {
        /// The cross-shard transfer's id.
        id: u128,
        /// What went wrong.
        message: String,
    },
}

/// How long a cross-shard transfer may stay undecided before the recovery task may abort it
/// (its prepare deadline is the coordinator's clock plus this), by default.
pub const DEFAULT_PREPARE_TIMEOUT: Duration = Duration::from_secs(10);

/// Cross-shard transfers of one batch run concurrently, at most this many at a time.
pub const CROSS_CONCURRENCY: usize = 64;

/// Result code of `ok` (transfers and cross steps).
const OK: u32 = 0;
/// Transfer result code of `exists`.
const EXISTS: u32 = 16;
/// Transfer result code of `pending_transfer_expired`: the reason recovery records when it
/// aborts a transaction at its prepare deadline.
pub const ABORT_EXPIRED: u32 = 45;
/// Transfer flags (as in `txpipe.ledger.v1.Transfer.flags`).
const LINKED: u32 = 1;
const PENDING: u32 = 2;
const POST: u32 = 4;
const VOID: u32 = 8;

/// A ledger client over a broker cluster: routes each call to the leader of the shard that
/// holds its accounts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LedgerClient {
    router: LeaderRouter,
    shards: u32,
    partitioning: Partitioning,
    deadline: Duration,
    prepare_timeout: Duration,
}

impl LedgerClient {
    /// A client over `addrs`. The shard count and partitioning are read from the cluster
    /// (shard `ledger-0`'s GetShard), so they cannot disagree with it.
    ///
    /// Errors: no valid address; the cluster does not answer within `deadline` or serves no
    /// ledger (FAILED_PRECONDITION / NOT_FOUND from the broker).
    pub async fn connect(
        addrs: Vec<String>,
        deadline: Duration,
    ) -> Result<LedgerClient, LedgerClientError> {
        Self::connect_with(addrs, deadline, None).await
    }

    /// [`LedgerClient::connect`] with optional mutual TLS towards the brokers.
    ///
    /// Errors: as [`LedgerClient::connect`].
    pub async fn connect_with(
        addrs: Vec<String>,
        deadline: Duration,
        tls: Option<crate::tls::TlsOptions>,
    ) -> Result<LedgerClient, LedgerClientError> {
        let router = LeaderRouter::with_config(
            addrs,
            crate::leader::LeaderConfig {
                tls,
                ..Default::default()
            },
        )?;
        let mut c = LedgerClient {
            router,
            shards: 1,
            partitioning: Partitioning::default(),
            deadline,
            prepare_timeout: DEFAULT_PREPARE_TIMEOUT,
        };
        let s = c.get_shard(0).await?;
        c.shards = s.shards.max(1);
        c.partitioning = s.partitioning.parse().map_err(|e: String| {
            LedgerClientError::Leader(LeaderError::Rejected(Status::internal(e)))
        })?;
        Ok(c)
    }

    /// The same client with another prepare timeout for the cross-shard transfers it
    /// coordinates (default [`DEFAULT_PREPARE_TIMEOUT`]).
    pub fn with_prepare_timeout(mut self, timeout: Duration) -> LedgerClient {
        self.prepare_timeout = timeout;
        self
    }

    /// Shard count of the cluster.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Partitioning of the cluster.
    pub fn partitioning(&self) -> Partitioning {
        self.partitioning
    }

    /// Shard of account `id`.
    pub fn shard_of(&self, id: u128) -> u32 {
        self.partitioning.shard_of(id, self.shards)
    }

    /// Runs a unary call on shard `shard`'s leader, following leader hints and retrying
    /// through failovers until the client's deadline (as [`LeaderRouter::call`]).
    pub async fn call<T, F, Fut>(&self, shard: u32, mut f: F) -> Result<T, LedgerClientError>
    where
        F: FnMut(RawClient<Channel>, String) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let stream = shard_name(shard);
        let mut fo = self.router.failover(&stream, self.deadline);
        loop {
            let target = fo.target().await?;
            let limit = self
                .router
                .config()
                .call_timeout
                .min(fo.time_left().max(MIN_ATTEMPT));
            let client = RawClient::new(target.channel.clone())
                .max_decoding_message_size(crate::leader::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::leader::MAX_MESSAGE_BYTES);
            let status = match tokio::time::timeout(limit, f(client, stream.clone())).await {
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

    /// Status of shard `shard` from its leader.
    pub async fn get_shard(&self, shard: u32) -> Result<v1::GetShardResponse, LedgerClientError> {
        self.call(shard, |mut c, s| async move {
            c.get_shard(v1::GetShardRequest {
                shard: s,
                local: false,
            })
            .await
        })
        .await
    }

    /// Creates accounts, split per shard (one request per shard, in parallel). Returns one
    /// result per account, in the order given.
    pub async fn create_accounts(
        &self,
        accounts: Vec<v1::Account>,
    ) -> Result<Vec<v1::EventResult>, LedgerClientError> {
        let groups = self.split(accounts, |a| from_pb(a.id.as_ref()));
        let calls = groups.into_iter().map(|(shard, (idx, batch))| async move {
            let r = self
                .call(shard, |mut c, s| {
                    let accounts = batch.clone();
                    async move {
                        c.create_accounts(v1::CreateAccountsRequest { shard: s, accounts })
                            .await
                    }
                })
                .await?;
            Ok::<_, LedgerClientError>((idx, r.results))
        });
        merge(futures::future::try_join_all(calls).await?)
    }

    /// Creates transfers: those within one shard go in one request per shard (in parallel),
    /// split by debit account; each transfer between two shards is run as a two-phase commit
    /// ([`LedgerClient::cross_transfer`], up to [`CROSS_CONCURRENCY`] at a time). Returns one
    /// result per transfer, in the order given; a cross-shard transfer answers `ok`,
    /// `exists` (its id was applied before), or the result of the leg that failed.
    ///
    /// Errors: [`LedgerClientError::Unsupported`] (before anything is sent) for a
    /// cross-shard transfer with flags, a timeout or a `pending_id`, or one that a linked
    /// chain reaches; a failed call. A cross-shard transfer interrupted by an error stays in
    /// its coordinator's table and is finished by a resend or by the recovery task.
    pub async fn create_transfers(
        &self,
        transfers: Vec<v1::Transfer>,
    ) -> Result<Vec<v1::EventResult>, LedgerClientError> {
        let mut local = Vec::new();
        let mut local_idx = Vec::new();
        let mut cross = Vec::new();
        let mut prev_linked = false;
        for (i, t) in transfers.into_iter().enumerate() {
            let linked = t.flags & LINKED != 0;
            if self.is_cross(&t) {
                if t.flags != 0 || t.timeout_ms != 0 || from_pb(t.pending_id.as_ref()) != 0 {
                    return Err(LedgerClientError::Unsupported(format!(
                        "event {i}: a cross-shard transfer must be a plain transfer (flags 0, no timeout, no pending_id); it has flags {}",
                        t.flags
                    )));
                }
                if prev_linked {
                    return Err(LedgerClientError::Unsupported(format!(
                        "event {i}: a linked chain can not include a cross-shard transfer"
                    )));
                }
                cross.push((i as u32, t));
            } else {
                local_idx.push(i as u32);
                local.push(t);
            }
            prev_linked = linked;
        }
        let local_results = async {
            if local.is_empty() {
                return Ok(Vec::new());
            }
            let groups = self.split(local, |t| from_pb(t.debit_account_id.as_ref()));
            let calls = groups.into_iter().map(|(shard, (idx, batch))| async move {
                let r = self.shard_transfers(shard, batch).await?;
                Ok::<_, LedgerClientError>((idx, r))
            });
            let mut out = merge(futures::future::try_join_all(calls).await?)?;
            for r in &mut out {
                r.index = local_idx[r.index as usize];
            }
            Ok(out)
        };
        let cross_results = async {
            use futures::StreamExt;
            let results: Vec<Result<v1::EventResult, LedgerClientError>> =
                futures::stream::iter(cross)
                    .map(|(index, t)| async move {
                        let (code, name) = self.cross_transfer(&t).await?;
                        Ok(v1::EventResult { index, code, name })
                    })
                    .buffer_unordered(CROSS_CONCURRENCY)
                    .collect()
                    .await;
            results.into_iter().collect::<Result<Vec<_>, _>>()
        };
        let (mut out, cross) = futures::try_join!(local_results, cross_results)?;
        out.extend(cross);
        out.sort_by_key(|r| r.index);
        Ok(out)
    }

    /// Whether `t` debits and credits accounts of two different shards (clearing accounts
    /// and unset ids belong to every shard).
    pub fn is_cross(&self, t: &v1::Transfer) -> bool {
        let dr = from_pb(t.debit_account_id.as_ref());
        let cr = from_pb(t.credit_account_id.as_ref());
        dr != 0
            && cr != 0
            && !is_clearing_account(dr)
            && !is_clearing_account(cr)
            && self.shard_of(dr) != self.shard_of(cr)
    }

    /// One CreateTransfers request to shard `shard`'s leader.
    async fn shard_transfers(
        &self,
        shard: u32,
        transfers: Vec<v1::Transfer>,
    ) -> Result<Vec<v1::EventResult>, LedgerClientError> {
        let n = transfers.len();
        let r = self
            .call(shard, |mut c, s| {
                let transfers = transfers.clone();
                async move {
                    c.create_transfers(v1::CreateTransfersRequest {
                        shard: s,
                        transfers,
                    })
                    .await
                }
            })
            .await?;
        if r.results.len() != n {
            return Err(LedgerClientError::Leader(LeaderError::Rejected(
                Status::internal(format!("{} results for {n} transfers", r.results.len())),
            )));
        }
        Ok(r.results)
    }

    /// The plan of cross-shard transfer `t`: its legs (ids from [`leg_ids`], through the
    /// clearing account of its ledger) and a prepare deadline of now plus the prepare
    /// timeout.
    pub fn cross_plan(&self, t: &v1::Transfer) -> v1::CrossTransfer {
        let id = from_pb(t.id.as_ref());
        let dr = from_pb(t.debit_account_id.as_ref());
        let cr = from_pb(t.credit_account_id.as_ref());
        let clearing = clearing_account(t.ledger);
        let ids = leg_ids(id);
        let deadline = unix_ns()
            .saturating_add(u64::try_from(self.prepare_timeout.as_nanos()).unwrap_or(u64::MAX));
        v1::CrossTransfer {
            id: t.id,
            debit_account_id: t.debit_account_id,
            credit_account_id: t.credit_account_id,
            amount: t.amount,
            user_data: t.user_data,
            ledger: t.ledger,
            code: t.code,
            legs: vec![
                v1::CrossLeg {
                    shard: self.shard_of(dr),
                    hold_id: to_pb(ids.debit_hold),
                    resolve_id: to_pb(ids.debit_resolve),
                    debit_account_id: to_pb(dr),
                    credit_account_id: to_pb(clearing),
                },
                v1::CrossLeg {
                    shard: self.shard_of(cr),
                    hold_id: to_pb(ids.credit_hold),
                    resolve_id: to_pb(ids.credit_resolve),
                    debit_account_id: to_pb(clearing),
                    credit_account_id: to_pb(cr),
                },
            ],
            prepare_deadline_ns: deadline,
        }
    }

    /// Runs plain transfer `t` between two shards as a two-phase commit and returns its
    /// result `(code, name)`: begin on the debit account's shard, then (unless a decision
    /// is recorded already) hold both legs and decide commit when both are held, abort
    /// with the failing leg's result otherwise (the debit leg's when both fail); then post
    /// or void both legs and complete. A resend of a committed transfer answers `exists`, of
    /// an aborted one the recorded failure, and moves nothing; a resend of an undecided one
    /// finishes it.
    pub async fn cross_transfer(
        &self,
        t: &v1::Transfer,
    ) -> Result<(u32, String), LedgerClientError> {
        let plan = self.cross_plan(t);
        let begun = self.begin_cross(plan).await?;
        let resend = begun.code == EXISTS;
        if begun.code != OK && !resend {
            return Ok((begun.code, begun.name));
        }
        let mut rec = record_of(begun.record, from_pb(t.id.as_ref()))?;
        if rec.decision == v1::Decision::None as i32 {
            let vote = self.prepare_legs(&rec).await?;
            let decided = self.decide_cross(&rec, vote).await?;
            rec = record_of(decided.record, from_pb(t.id.as_ref()))?;
        }
        self.finish_cross(&rec).await?;
        Ok(if rec.decision == v1::Decision::Commit as i32 {
            if resend {
                (EXISTS, "exists".into())
            } else {
                (OK, "ok".into())
            }
        } else {
            (rec.abort_code, rec.abort_name)
        })
    }

    /// Step 1: records `plan` in its coordinator's table (the shard of its debit leg).
    /// Answers a transfer result (`ok`, `exists`, `exists_with_different_amount`, ...) and
    /// the record.
    pub async fn begin_cross(
        &self,
        plan: v1::CrossTransfer,
    ) -> Result<v1::CrossTransferResponse, LedgerClientError> {
        let shard = plan.legs.first().map_or(0, |l| l.shard);
        self.call(shard, |mut c, s| {
            let transfer = Some(plan.clone());
            async move {
                c.begin_cross_transfer(v1::BeginCrossTransferRequest { shard: s, transfer })
                    .await
            }
        })
        .await
    }

    /// Step 2: holds both legs of `rec` (in parallel, each on its shard). Returns `None`
    /// when both are held (`ok`, or `exists` from an earlier attempt), else the failing
    /// leg's `(code, name)` (the debit leg's first).
    pub async fn prepare_legs(
        &self,
        rec: &v1::CrossRecord,
    ) -> Result<Option<(u32, String)>, LedgerClientError> {
        let t = cross_of(rec)?;
        let holds = t.legs.iter().map(|leg| async move {
            let r = self
                .shard_transfers(leg.shard, vec![leg_hold(t, leg, PENDING)])
                .await?;
            Ok::<_, LedgerClientError>(r.into_iter().next())
        });
        let results = futures::future::try_join_all(holds).await?;
        for r in results.into_iter().flatten() {
            if r.code != OK && r.code != EXISTS {
                return Ok(Some((r.code, r.name)));
            }
        }
        Ok(None)
    }

    /// Step 3: proposes the decision for `rec` (commit when `failed` is `None`, else abort
    /// with that result code). Write-once: the answer's record holds the decision that
    /// stands, which may be another one written first (by the recovery task).
    pub async fn decide_cross(
        &self,
        rec: &v1::CrossRecord,
        failed: Option<(u32, String)>,
    ) -> Result<v1::CrossTransferResponse, LedgerClientError> {
        let t = cross_of(rec)?;
        let (decision, abort_code) = match failed {
            None => (v1::Decision::Commit, 0),
            Some((code, _)) => (v1::Decision::Abort, code),
        };
        let shard = t.legs[0].shard;
        self.call(shard, |mut c, s| {
            let id = t.id;
            async move {
                c.decide_cross_transfer(v1::DecideCrossTransferRequest {
                    shard: s,
                    id,
                    decision: decision as i32,
                    abort_code,
                })
                .await
            }
        })
        .await
    }

    /// Step 4: posts (commit) or voids (abort) both legs of decided `rec`, then marks it
    /// complete in its coordinator's table. Idempotent: the posts and voids carry the legs'
    /// resolve ids, so a repeat answers `exists`. A void of a leg that was never held
    /// **fences** its id: a linked chain holds it between the ledger's clearing and
    /// [`fence_account`]s and voids it, so that a late hold of a slow coordinator answers
    /// `exists_with_different_flags` (a "no" vote) instead of reserving money that no
    /// decision would release.
    ///
    /// Errors: `rec` is undecided, or a post is refused ([`LedgerClientError::Cross`]); a
    /// failed call.
    pub async fn finish_cross(&self, rec: &v1::CrossRecord) -> Result<(), LedgerClientError> {
        let t = cross_of(rec)?;
        let id = from_pb(t.id.as_ref());
        let commit = match v1::Decision::try_from(rec.decision) {
            Ok(v1::Decision::Commit) => true,
            Ok(v1::Decision::Abort) => false,
            _ => {
                return Err(LedgerClientError::Cross {
                    id,
                    message: "finish before a decision".into(),
                });
            }
        };
        let resolves = t.legs.iter().map(|leg| self.resolve_leg(t, leg, commit));
        futures::future::try_join_all(resolves).await?;
        let shard = t.legs[0].shard;
        let done = self
            .call(shard, |mut c, s| {
                let id = t.id;
                async move {
                    c.complete_cross_transfer(v1::CompleteCrossTransferRequest { shard: s, id })
                        .await
                }
            })
            .await?;
        if done.code != OK && done.code != 1 {
            return Err(LedgerClientError::Cross {
                id,
                message: format!("complete answered {}", done.name),
            });
        }
        Ok(())
    }

    /// Posts or voids one leg (see [`LedgerClient::finish_cross`]).
    async fn resolve_leg(
        &self,
        t: &v1::CrossTransfer,
        leg: &v1::CrossLeg,
        commit: bool,
    ) -> Result<(), LedgerClientError> {
        let id = from_pb(t.id.as_ref());
        let resolve = v1::Transfer {
            id: leg.resolve_id,
            pending_id: leg.hold_id,
            flags: if commit { POST } else { VOID },
            ..v1::Transfer::default()
        };
        for _ in 0..3 {
            let r = self.shard_transfers(leg.shard, vec![resolve]).await?;
            let name = r.first().map_or("", |r| r.name.as_str());
            match (name, commit) {
                ("ok" | "exists", _)
                | ("pending_transfer_already_posted", true)
                | ("pending_transfer_already_voided", false) => return Ok(()),
                ("pending_transfer_not_found", false) => {
                    // Never held: take its id by a hold between the reserved clearing and
                    // fence accounts (no limits, created on use) voided at once, so a late
                    // hold of the real leg answers `exists_with_different_flags`.
                    let fence = v1::Transfer {
                        debit_account_id: to_pb(clearing_account(t.ledger)),
                        credit_account_id: to_pb(fence_account(t.ledger)),
                        ..leg_hold(t, leg, PENDING | LINKED)
                    };
                    let r = self
                        .shard_transfers(leg.shard, vec![fence, resolve])
                        .await?;
                    let first = r.first().map_or("", |r| r.name.as_str());
                    if first == "ok" {
                        return Ok(());
                    }
                    if first.starts_with("exists") {
                        continue; // held meanwhile: void it
                    }
                    return Err(LedgerClientError::Cross {
                        id,
                        message: format!(
                            "fencing leg {} on {} answered {first}",
                            from_pb(leg.hold_id.as_ref()),
                            shard_name(leg.shard)
                        ),
                    });
                }
                (other, _) => {
                    return Err(LedgerClientError::Cross {
                        id,
                        message: format!(
                            "{} of leg {} on {} answered {other}",
                            if commit { "post" } else { "void" },
                            from_pb(leg.hold_id.as_ref()),
                            shard_name(leg.shard)
                        ),
                    });
                }
            }
        }
        Err(LedgerClientError::Cross {
            id,
            message: format!(
                "void of leg {} on {} did not settle",
                from_pb(leg.hold_id.as_ref()),
                shard_name(leg.shard)
            ),
        })
    }

    /// Incomplete cross-shard transfers coordinated by shard `shard`, in id order.
    pub async fn open_cross(&self, shard: u32) -> Result<Vec<v1::CrossRecord>, LedgerClientError> {
        let mut out = Vec::new();
        let mut after = 0u128;
        loop {
            let r = self
                .call(shard, |mut c, s| async move {
                    c.list_open_cross_transfers(v1::ListCrossTransfersRequest {
                        shard: s,
                        after_id: to_pb(after),
                        limit: 1000,
                    })
                    .await
                })
                .await?;
            let full = r.records.len() >= 1000;
            let last = r
                .records
                .last()
                .and_then(|r| r.transfer.as_ref())
                .map(|t| from_pb(t.id.as_ref()));
            out.extend(r.records);
            match last {
                Some(l) if full => after = l,
                _ => return Ok(out),
            }
        }
    }

    /// Recovery of shard `shard`'s table at `now_ns` (ns since the epoch): every incomplete
    /// transaction whose prepare deadline has passed is aborted when still undecided
    /// (reason `pending_transfer_expired`; write-once, so a commit written first stands) and
    /// then finished as decided. Returns how many were finished; the first error stops the
    /// pass (the next pass retries).
    pub async fn recover_shard(&self, shard: u32, now_ns: u64) -> Result<usize, LedgerClientError> {
        let mut done = 0;
        for rec in self.open_cross(shard).await? {
            let t = cross_of(&rec)?;
            if t.prepare_deadline_ns > now_ns {
                continue;
            }
            let id = from_pb(t.id.as_ref());
            let rec = if rec.decision == v1::Decision::None as i32 {
                let d = self
                    .decide_cross(
                        &rec,
                        Some((ABORT_EXPIRED, "pending_transfer_expired".into())),
                    )
                    .await?;
                record_of(d.record, id)?
            } else {
                rec
            };
            self.finish_cross(&rec).await?;
            done += 1;
        }
        Ok(done)
    }

    /// Looks accounts up on their shards; unknown ids are left out.
    pub async fn lookup_accounts(
        &self,
        ids: &[u128],
    ) -> Result<Vec<v1::Account>, LedgerClientError> {
        let mut out = Vec::new();
        for (shard, (_, ids)) in self.split(ids.to_vec(), |id| *id) {
            let ids: Vec<v1::U128> = ids.into_iter().filter_map(to_pb).collect();
            let r = self
                .call(shard, |mut c, s| {
                    let ids = ids.clone();
                    async move {
                        c.lookup_accounts(v1::LookupAccountsRequest { shard: s, ids })
                            .await
                    }
                })
                .await?;
            out.extend(r.accounts);
        }
        Ok(out)
    }

    /// Accounts with ids in `from..=to` on every shard, in id order (pages through each
    /// shard).
    pub async fn list_accounts(
        &self,
        from: u128,
        to: u128,
    ) -> Result<Vec<v1::Account>, LedgerClientError> {
        let mut out = Vec::new();
        for shard in 0..self.shards {
            let mut next = from;
            loop {
                let r = self
                    .call(shard, |mut c, s| async move {
                        c.list_accounts(v1::ListAccountsRequest {
                            shard: s,
                            from_id: to_pb(next),
                            to_id: to_pb(to),
                            limit: 1000,
                        })
                        .await
                    })
                    .await?;
                let last = r.accounts.last().map(|a| from_pb(a.id.as_ref()));
                let full = r.accounts.len() >= 1000;
                out.extend(r.accounts);
                match last {
                    Some(l) if full && l < to => next = l + 1,
                    _ => break,
                }
            }
        }
        out.sort_by_key(|a| from_pb(a.id.as_ref()));
        Ok(out)
    }

    /// Groups `items` by shard, keeping each item's index in the input.
    fn split<T>(
        &self,
        items: Vec<T>,
        id: impl Fn(&T) -> u128,
    ) -> BTreeMap<u32, (Vec<u32>, Vec<T>)> {
        let mut groups: BTreeMap<u32, (Vec<u32>, Vec<T>)> = BTreeMap::new();
        for (i, item) in items.into_iter().enumerate() {
            let g = groups.entry(self.shard_of(id(&item))).or_default();
            g.0.push(i as u32);
            g.1.push(item);
        }
        groups
    }
}

/// Nanoseconds since the Unix epoch by this machine's clock (0 before it).
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The hold of `leg` of `t` with `flags` (the legs' user data is the transfer's id, so a
/// leg can be traced back to its transaction).
fn leg_hold(t: &v1::CrossTransfer, leg: &v1::CrossLeg, flags: u32) -> v1::Transfer {
    v1::Transfer {
        id: leg.hold_id,
        debit_account_id: leg.debit_account_id,
        credit_account_id: leg.credit_account_id,
        amount: t.amount,
        user_data: t.id,
        ledger: t.ledger,
        code: t.code,
        flags,
        ..v1::Transfer::default()
    }
}

/// The record of a cross step's answer, an error when absent.
fn record_of(rec: Option<v1::CrossRecord>, id: u128) -> Result<v1::CrossRecord, LedgerClientError> {
    rec.ok_or_else(|| LedgerClientError::Cross {
        id,
        message: "the coordinator answered without a record".into(),
    })
}

/// The transfer of a record, checked to have its two legs.
fn cross_of(rec: &v1::CrossRecord) -> Result<&v1::CrossTransfer, LedgerClientError> {
    match rec.transfer.as_ref() {
        Some(t) if t.legs.len() == 2 => Ok(t),
        t => Err(LedgerClientError::Cross {
            id: t.map_or(0, |t| from_pb(t.id.as_ref())),
            message: "a record without its two legs".into(),
        }),
    }
}

/// Puts per-shard results back in input order (their `index` becomes the input index).
fn merge(
    parts: Vec<(Vec<u32>, Vec<v1::EventResult>)>,
) -> Result<Vec<v1::EventResult>, LedgerClientError> {
    let mut out = Vec::new();
    for (idx, results) in parts {
        for r in results {
            let Some(&i) = idx.get(r.index as usize) else {
                return Err(LedgerClientError::Leader(LeaderError::Rejected(
                    Status::internal(format!("result for event {} of a shorter batch", r.index)),
                )));
            };
            out.push(v1::EventResult { index: i, ..r });
        }
    }
    out.sort_by_key(|r| r.index);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_partitioning_follows_seed_004_and_hashes_the_rest() {
        let p: Partitioning = "range:1000".parse().unwrap();
        assert_eq!(p.to_string(), "range:1000");
        for (id, shard) in [
            (1, 0),
            (1000, 0),
            (1001, 1),
            (2000, 1),
            (2001, 2),
            (3000, 2),
        ] {
            assert_eq!(p.shard_of(id, 3), shard, "id {id}");
        }
        assert!(p.shard_of(3001, 3) < 3);
        assert_eq!(p.shard_of(3001, 3), Partitioning::Hash.shard_of(3001, 3));
        for s in 0..3 {
            let op = p.operator_account(s, 3);
            assert!(op >= 1 << 64);
            assert_eq!(p.shard_of(op, 3), s);
        }
        assert!("range:0".parse::<Partitioning>().is_err());
        assert!("modulo".parse::<Partitioning>().is_err());
        assert_eq!("hash".parse::<Partitioning>(), Ok(Partitioning::Hash));
    }

    #[test]
    fn shard_names_round_trip() {
        assert_eq!(shard_index(&shard_name(7)), Some(7));
        assert_eq!(shard_index("ledger-"), None);
        assert_eq!(shard_index("ledger-01"), None);
        assert_eq!(shard_index("decisions"), None);
    }

    #[test]
    fn leg_ids_are_fixed_distinct_and_never_reserved() {
        let a = leg_ids(42);
        assert_eq!(a, leg_ids(42), "derived from the id alone");
        let all = [
            a.debit_hold,
            a.debit_resolve,
            a.credit_hold,
            a.credit_resolve,
        ];
        for (i, x) in all.iter().enumerate() {
            assert!(*x != 0 && *x != u128::MAX);
            assert!(all[i + 1..].iter().all(|y| y != x), "distinct");
        }
        assert_ne!(leg_ids(43), a);
    }

    #[test]
    fn clearing_accounts_are_a_reserved_block_keyed_by_ledger() {
        assert_eq!(clearing_ledger(clearing_account(7)), Some(7));
        assert_eq!(clearing_ledger(fence_account(7)), Some(7));
        assert_ne!(fence_account(7), clearing_account(7));
        assert!(is_clearing_account(fence_account(7)));
        assert_eq!(clearing_ledger(clearing_account(0)), None);
        assert!(is_clearing_account(clearing_account(u32::MAX)));
        assert!(is_clearing_account(CLEARING_ACCOUNT_BASE + (1 << 40)));
        assert_eq!(clearing_ledger(CLEARING_ACCOUNT_BASE + (1 << 40)), None);
        assert!(!is_clearing_account(u128::MAX));
        assert!(!is_clearing_account(3000));
        assert!(!is_clearing_account(1 << 64));
    }

    #[test]
    fn u128_travels_as_two_halves() {
        for v in [0u128, 1, u128::from(u64::MAX), 1 << 64, u128::MAX] {
            assert_eq!(from_pb(to_pb(v).as_ref()), v);
        }
        assert_eq!(from_pb(None), 0);
    }
}
