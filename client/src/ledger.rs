//! The ledger's wire contract ([`v1`], generated from `proto/txpipe/ledger/v1/ledger.proto`),
//! its sharding rule ([`Partitioning`]) and a client ([`LedgerClient`]) that maps account ids
//! to shards, splits batches per shard and follows each shard's leader.
//!
//! A shard is the Raft group `ledger-<i>` ([`shard_name`]); the broker cluster is created
//! with a shard count and a [`Partitioning`], fixed for its life.

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

/// Whether `id` is in the reserved block of clearing accounts.
pub fn is_clearing_account(id: u128) -> bool {
    id >> 64 == CLEARING_ACCOUNT_BASE >> 64
}

/// The ledger of clearing account `id` (`None` when `id` is not a clearing account of a
/// ledger ≠ 0).
pub fn clearing_ledger(id: u128) -> Option<u32> {
    if !is_clearing_account(id) {
        return None;
    }
    u32::try_from(id - CLEARING_ACCOUNT_BASE)
        .ok()
        .filter(|l| *l != 0)
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
}

/// A ledger client over a broker cluster: routes each call to the leader of the shard that
/// holds its accounts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LedgerClient {
    router: LeaderRouter,
    shards: u32,
    partitioning: Partitioning,
    deadline: Duration,
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
        let router = LeaderRouter::new(addrs)?;
        let mut c = LedgerClient {
            router,
            shards: 1,
            partitioning: Partitioning::default(),
            deadline,
        };
        let s = c.get_shard(0).await?;
        c.shards = s.shards.max(1);
        c.partitioning = s.partitioning.parse().map_err(|e: String| {
            LedgerClientError::Leader(LeaderError::Rejected(Status::internal(e)))
        })?;
        Ok(c)
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

    /// Creates transfers, split per shard by debit account (a transfer whose credit account
    /// is on another shard is refused by the broker: cross-shard transfers are not supported
    /// yet). Returns one result per transfer, in the order given.
    pub async fn create_transfers(
        &self,
        transfers: Vec<v1::Transfer>,
    ) -> Result<Vec<v1::EventResult>, LedgerClientError> {
        let groups = self.split(transfers, |t| from_pb(t.debit_account_id.as_ref()));
        let calls = groups.into_iter().map(|(shard, (idx, batch))| async move {
            let r = self
                .call(shard, |mut c, s| {
                    let transfers = batch.clone();
                    async move {
                        c.create_transfers(v1::CreateTransfersRequest {
                            shard: s,
                            transfers,
                        })
                        .await
                    }
                })
                .await?;
            Ok::<_, LedgerClientError>((idx, r.results))
        });
        merge(futures::future::try_join_all(calls).await?)
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
    fn u128_travels_as_two_halves() {
        for v in [0u128, 1, u128::from(u64::MAX), 1 << 64, u128::MAX] {
            assert_eq!(from_pb(to_pb(v).as_ref()), v);
        }
        assert_eq!(from_pb(None), 0);
    }
}
