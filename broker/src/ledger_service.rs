//! The `txpipe.ledger.v1.Ledger` gRPC service: the ledger shards' front, served on the
//! broker's client port next to the Broker service.
//!
//! Each request names one shard (`ledger-<i>`, a Raft group of the broker). Writes are
//! proposed on that shard's leader as [`Command::Ledger`] entries stamped with the leader's
//! clock; a follower answers UNAVAILABLE with the `txpipe-leader` hint (as the Broker
//! service does). Reads run after [`crate::replica::Replica::read_barrier`], so they are
//! linearizable. The events of a request must belong to its shard (by the cluster's
//! [`Partitioning`]): others are INVALID_ARGUMENT naming their shard, and a transfer between
//! two shards is FAILED_PRECONDITION: cross-shard transfers go through the two-phase commit
//! of [`txpipe_client::ledger::LedgerClient`], whose steps are the `*CrossTransfer` RPCs
//! here. Clearing accounts ([`is_clearing_account`]) exist on every shard and are exempt
//! from the routing checks; clients can not create them.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use txpipe_client::ledger::v1::ledger_server::Ledger;
use txpipe_client::ledger::v1::{
    self as pb, BeginCrossTransferRequest, CompleteCrossTransferRequest, CreateAccountsRequest,
    CreateAccountsResponse, CreateTransfersRequest, CreateTransfersResponse, CrossTransferResponse,
    DecideCrossTransferRequest, EventResult, GetAccountTransfersRequest,
    GetAccountTransfersResponse, GetShardRequest, GetShardResponse, ListAccountsRequest,
    ListAccountsResponse, ListCrossTransfersRequest, ListCrossTransfersResponse,
    LookupAccountsRequest, LookupAccountsResponse, LookupTransfersRequest, LookupTransfersResponse,
};
use txpipe_client::ledger::{
    Partitioning, clearing_account, fence_account, from_pb, is_clearing_account, leg_ids,
    shard_index, shard_name, to_pb,
};

use crate::auth::{Acl, Operation};
use crate::broker::{Broker, Stream};
use crate::command::Command;
use crate::error::{Error, Result};
use crate::ledger::{
    Account, AccountFlags, CreateTransferResult, CrossLeg, CrossRecord, CrossTransfer, Decision,
    LedgerCommand, LedgerReply, Transfer, TransferFlags,
};
use crate::state::ApplyOutcome;

/// Most events in one CreateAccounts / CreateTransfers request (TigerBeetle's batch size).
pub const MAX_BATCH: usize = 8190;
/// Most ids in one lookup.
pub const MAX_LOOKUP: usize = 8190;
/// Default and largest page of a list.
pub const DEFAULT_PAGE: usize = 1000;
/// Largest page of a list.
pub const MAX_PAGE: usize = 10_000;

/// gRPC front of the ledger shards.
#[derive(Clone)]
pub struct LedgerService {
    broker: Arc<Broker>,
    partitioning: Partitioning,
    acl: Acl,
}

impl LedgerService {
    /// Wraps a broker; calls are checked against [`crate::auth`] when its TLS is on.
    ///
    /// Errors: [`Error::Config`] for an invalid `--ledger-partitioning`.
    pub fn new(broker: Arc<Broker>) -> Result<Self> {
        let partitioning = broker.config.partitioning()?;
        let acl = Acl::new(broker.config.tls_enabled());
        Ok(Self {
            broker,
            partitioning,
            acl,
        })
    }

    fn shards(&self) -> u32 {
        self.broker.config.ledger_shards
    }

    /// The shard named `name`.
    fn shard(&self, name: &str) -> Result<(u32, &Stream)> {
        if self.shards() == 0 {
            return Err(Error::FailedPrecondition(
                "this cluster has no ledger (brokers were started with --ledger-shards 0)".into(),
            ));
        }
        let last = shard_name(self.shards() - 1);
        match shard_index(name) {
            Some(i) if i < self.shards() => Ok((i, self.broker.stream(name)?)),
            _ => Err(Error::InvalidArgument(format!(
                "{name:?} is not a ledger shard of this cluster (ledger-0 ... {last})"
            ))),
        }
    }

    /// Checks that account `id` of event `index` lives on `shard`.
    fn owned(&self, shard: u32, what: &str, index: usize, id: u128) -> Result<()> {
        let s = self.partitioning.shard_of(id, self.shards());
        if s == shard {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "event {index}: {what} {id} belongs to shard {}, not {} (partitioning {}); send it there",
                shard_name(s),
                shard_name(shard),
                self.partitioning
            )))
        }
    }

    async fn propose(&self, stream: &Stream, command: LedgerCommand) -> Result<LedgerReply> {
        let replica = &stream.replica;
        replica.require_leader()?;
        // The leader's clock, stamped once here: every replica applies the same time.
        let time_ns = unix_ns();
        let out = replica
            .propose(vec![Command::Ledger { time_ns, command }])
            .await?
            .pop();
        match out {
            Some(ApplyOutcome::Ledger(reply)) => Ok(reply),
            other => Err(Error::Unavailable(format!(
                "{}: unexpected outcome {other:?}",
                replica.spec.name
            ))),
        }
    }
}

/// Proposes [`LedgerCommand::ExpirePending`] on every ledger shard this node leads whose
/// earliest hold deadline has passed by this node's clock, so that holds are released when no
/// transfers arrive (a `CreateTransfers` expires due holds too). Called every second by the
/// broker's background task; failures are logged and retried at the next call.
pub async fn expire_due_holds(broker: &Broker) {
    let now = unix_ns();
    for (name, stream) in &broker.streams {
        let r = &stream.replica;
        if !r.spec.ledger || !r.is_leader() {
            continue;
        }
        let due = r.with_core(|c| {
            c.state
                .ledger()
                .and_then(|l| l.next_expiry())
                .is_some_and(|at| at <= now)
        });
        if !due {
            continue;
        }
        let cmd = Command::Ledger {
            time_ns: unix_ns(),
            command: LedgerCommand::ExpirePending,
        };
        match r.propose(vec![cmd]).await {
            Ok(out) => {
                if let Some(ApplyOutcome::Ledger(LedgerReply::Expired(ids))) = out.first() {
                    tracing::debug!(shard = %name, expired = ids.len(), "holds expired");
                }
            }
            Err(e) => tracing::warn!(shard = %name, error = %e, "expiring holds failed"),
        }
    }
}

/// How long the recovery task waits for a shard leader when it connects its ledger client.
const RECOVERY_CONNECT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Recovery of cross-shard transfers: on every ledger shard this node leads, the
/// transactions of its table that are still incomplete past their prepare deadline (by this
/// node's clock) are aborted when undecided (write-once: a commit recorded first stands) and
/// finished as decided, through a ledger client over the cluster's client addresses
/// (`client`, connected on first use): the legs on other shards are posted or voided like
/// the coordinator would. Called every second by the broker's background task; a pass that
/// is still running makes the next call return at once (the lock is taken with `try_lock`).
/// Failures are logged and retried at the next call.
pub async fn recover_cross_transfers(
    broker: &Broker,
    client: &tokio::sync::Mutex<Option<txpipe_client::ledger::LedgerClient>>,
) {
    let Ok(mut client) = client.try_lock() else {
        return;
    };
    let now = unix_ns();
    for (name, stream) in &broker.streams {
        let r = &stream.replica;
        if !r.spec.ledger || !r.is_leader() {
            continue;
        }
        let Some(shard) = shard_index(name) else {
            continue;
        };
        let due = r.with_core(|c| {
            c.state.ledger().is_some_and(|l| {
                l.open_cross(0, usize::MAX)
                    .iter()
                    .any(|rec| rec.transfer.prepare_deadline_ns <= now)
            })
        });
        if !due {
            continue;
        }
        if client.is_none() {
            let n = broker.config.peers.len().max(1);
            let addrs = (0..n).map(|i| broker.config.client_addr(i)).collect();
            // With TLS, the recovery task dials with this broker's own identity (role
            // `broker`, which the ACL lets finish cross-shard transfers).
            let tls = match broker.config.tls_files() {
                Ok(files) => files.map(|f| f.client_options()),
                Err(e) => {
                    tracing::warn!(error = %e, "recovery: TLS settings");
                    return;
                }
            };
            match txpipe_client::ledger::LedgerClient::connect_with(
                addrs,
                RECOVERY_CONNECT_DEADLINE,
                tls,
            )
            .await
            {
                Ok(c) => *client = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "recovery: ledger client not connected");
                    return;
                }
            }
        }
        let Some(c) = client.as_ref() else {
            return;
        };
        match c.recover_shard(shard, now).await {
            Ok(n) => tracing::info!(shard = %name, finished = n, "recovered cross-shard transfers"),
            Err(e) => {
                tracing::warn!(shard = %name, error = %e, "recovering cross-shard transfers failed")
            }
        }
    }
}

/// Nanoseconds since the Unix epoch (0 before it).
fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Checks that a transfer naming a reserved (clearing or fence) account is a leg of a
/// cross-shard transfer as the two-phase commit sends it: a hold (maybe linked) with
/// `user_data` = the cross-shard transfer's id `T` and the id [`leg_ids`] derives from `T`,
/// either the debit leg (`x → clearing`), the credit leg (`clearing → y`), or a fence of
/// either (`clearing → fence`). Posts and voids pass (the state machine matches them to the
/// hold). `Err` says what is wrong. This keeps clients from moving money through the
/// clearing accounts by accident; it does not stop a client that forges legs on purpose
/// (any client can move money between any accounts anyway).
fn check_reserved(t: &Transfer) -> std::result::Result<(), String> {
    let dr = is_clearing_account(t.debit_account_id);
    let cr = is_clearing_account(t.credit_account_id);
    if !dr && !cr
        || t.flags.contains(TransferFlags::POST_PENDING_TRANSFER)
        || t.flags.contains(TransferFlags::VOID_PENDING_TRANSFER)
    {
        return Ok(());
    }
    let hold = TransferFlags(t.flags.0 & !TransferFlags::LINKED.0) == TransferFlags::PENDING;
    let ids = leg_ids(t.user_data);
    let clearing = clearing_account(t.ledger);
    let fence = t.debit_account_id == clearing && t.credit_account_id == fence_account(t.ledger);
    let shape = if t.id == ids.debit_hold {
        fence || (!dr && t.credit_account_id == clearing)
    } else if t.id == ids.credit_hold {
        fence || (!cr && t.debit_account_id == clearing)
    } else {
        false
    };
    if hold && shape && t.timeout_ms == 0 {
        Ok(())
    } else {
        Err(format!(
            "accounts {} and {}: clearing and fence accounts (ids from {:#x}) are reserved for the legs of cross-shard transfers",
            t.debit_account_id,
            t.credit_account_id,
            txpipe_client::ledger::CLEARING_ACCOUNT_BASE
        ))
    }
}

fn u16_field(index: usize, name: &str, v: u32) -> Result<u16> {
    u16::try_from(v).map_err(|_| {
        Error::InvalidArgument(format!("event {index}: {name} {v} does not fit in 16 bits"))
    })
}

fn account_from_pb(index: usize, a: &pb::Account) -> Result<Account> {
    Ok(Account {
        id: from_pb(a.id.as_ref()),
        user_data: from_pb(a.user_data.as_ref()),
        debits_pending: from_pb(a.debits_pending.as_ref()),
        debits_posted: from_pb(a.debits_posted.as_ref()),
        credits_pending: from_pb(a.credits_pending.as_ref()),
        credits_posted: from_pb(a.credits_posted.as_ref()),
        ledger: a.ledger,
        code: u16_field(index, "code", a.code)?,
        flags: AccountFlags(u16_field(index, "flags", a.flags)?),
        timestamp: a.timestamp_ns,
    })
}

fn transfer_from_pb(index: usize, t: &pb::Transfer) -> Result<Transfer> {
    Ok(Transfer {
        id: from_pb(t.id.as_ref()),
        debit_account_id: from_pb(t.debit_account_id.as_ref()),
        credit_account_id: from_pb(t.credit_account_id.as_ref()),
        amount: from_pb(t.amount.as_ref()),
        pending_id: from_pb(t.pending_id.as_ref()),
        user_data: from_pb(t.user_data.as_ref()),
        timeout_ms: t.timeout_ms,
        ledger: t.ledger,
        code: u16_field(index, "code", t.code)?,
        flags: TransferFlags(u16_field(index, "flags", t.flags)?),
        timestamp: t.timestamp_ns,
    })
}

/// An account on the wire.
pub fn account_to_pb(a: &Account) -> pb::Account {
    pb::Account {
        id: to_pb(a.id),
        user_data: to_pb(a.user_data),
        debits_pending: to_pb(a.debits_pending),
        debits_posted: to_pb(a.debits_posted),
        credits_pending: to_pb(a.credits_pending),
        credits_posted: to_pb(a.credits_posted),
        ledger: a.ledger,
        code: u32::from(a.code),
        flags: u32::from(a.flags.0),
        timestamp_ns: a.timestamp,
    }
}

/// A transfer on the wire.
pub fn transfer_to_pb(t: &Transfer) -> pb::Transfer {
    pb::Transfer {
        id: to_pb(t.id),
        debit_account_id: to_pb(t.debit_account_id),
        credit_account_id: to_pb(t.credit_account_id),
        amount: to_pb(t.amount),
        pending_id: to_pb(t.pending_id),
        user_data: to_pb(t.user_data),
        timeout_ms: t.timeout_ms,
        ledger: t.ledger,
        code: u32::from(t.code),
        flags: u32::from(t.flags.0),
        timestamp_ns: t.timestamp,
    }
}

fn check_batch(what: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidArgument(format!("{what}: empty batch")));
    }
    if n > MAX_BATCH {
        return Err(Error::InvalidArgument(format!(
            "{what}: {n} events, at most {MAX_BATCH} per request"
        )));
    }
    Ok(())
}

fn page(limit: u32) -> usize {
    match limit as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

fn ids(v: &[pb::U128]) -> Result<Vec<u128>> {
    if v.len() > MAX_LOOKUP {
        return Err(Error::InvalidArgument(format!(
            "{} ids, at most {MAX_LOOKUP} per lookup",
            v.len()
        )));
    }
    Ok(v.iter().map(|id| from_pb(Some(id))).collect())
}

#[tonic::async_trait]
impl Ledger for LedgerService {
    #[tracing::instrument(skip_all, fields(shard = %req.get_ref().shard, n = req.get_ref().accounts.len()))]
    async fn create_accounts(
        &self,
        req: Request<CreateAccountsRequest>,
    ) -> std::result::Result<Response<CreateAccountsResponse>, Status> {
        self.acl
            .check(&req, Operation::Ledger("CreateAccounts"), "")?;
        let req = req.into_inner();
        let (shard, stream) = self.shard(&req.shard)?;
        check_batch("create accounts", req.accounts.len())?;
        let mut batch = Vec::with_capacity(req.accounts.len());
        for (i, a) in req.accounts.iter().enumerate() {
            let a = account_from_pb(i, a)?;
            if is_clearing_account(a.id) {
                return Err(Error::InvalidArgument(format!(
                    "event {i}: account {} is in the reserved range of clearing accounts",
                    a.id
                ))
                .into());
            }
            self.owned(shard, "account", i, a.id)?;
            batch.push(a);
        }
        let results = match self
            .propose(stream, LedgerCommand::CreateAccounts(batch))
            .await?
        {
            LedgerReply::Accounts(r) => event_results(r, |r| (r as u32, r.as_str())),
            other => return Err(Error::Unavailable(format!("unexpected reply {other:?}")).into()),
        };
        Ok(Response::new(CreateAccountsResponse { results }))
    }

    #[tracing::instrument(skip_all, fields(shard = %req.get_ref().shard, n = req.get_ref().transfers.len()))]
    async fn create_transfers(
        &self,
        req: Request<CreateTransfersRequest>,
    ) -> std::result::Result<Response<CreateTransfersResponse>, Status> {
        self.acl
            .check(&req, Operation::Ledger("CreateTransfers"), "")?;
        let req = req.into_inner();
        let (shard, stream) = self.shard(&req.shard)?;
        check_batch("create transfers", req.transfers.len())?;
        let mut batch = Vec::with_capacity(req.transfers.len());
        for (i, t) in req.transfers.iter().enumerate() {
            let t = transfer_from_pb(i, t)?;
            check_reserved(&t).map_err(|e| {
                Error::InvalidArgument(format!("event {i} (transfer {}): {e}", t.id))
            })?;
            // A post or void may leave the accounts 0 (taken from the hold): nothing to route.
            // Clearing accounts exist on every shard (the legs of cross-shard transfers).
            if t.debit_account_id != 0 && !is_clearing_account(t.debit_account_id) {
                self.owned(shard, "debit account", i, t.debit_account_id)?;
            }
            if t.credit_account_id != 0 && !is_clearing_account(t.credit_account_id) {
                let s = self
                    .partitioning
                    .shard_of(t.credit_account_id, self.shards());
                if s != shard {
                    return Err(Error::FailedPrecondition(format!(
                        "event {i} (transfer {}) debits account {} on {} and credits account {} on {}: cross-shard transfers go through the ledger client's two-phase commit (txpipe_client::ledger::LedgerClient::create_transfers), not one CreateTransfers request",
                        t.id,
                        t.debit_account_id,
                        shard_name(shard),
                        t.credit_account_id,
                        shard_name(s)
                    ))
                    .into());
                }
            }
            batch.push(t);
        }
        let results = match self
            .propose(stream, LedgerCommand::CreateTransfers(batch))
            .await?
        {
            LedgerReply::Transfers(r) => event_results(r, |r| (r as u32, r.as_str())),
            other => return Err(Error::Unavailable(format!("unexpected reply {other:?}")).into()),
        };
        Ok(Response::new(CreateTransfersResponse { results }))
    }

    async fn lookup_accounts(
        &self,
        req: Request<LookupAccountsRequest>,
    ) -> std::result::Result<Response<LookupAccountsResponse>, Status> {
        self.acl
            .check(&req, Operation::Ledger("LookupAccounts"), "")?;
        let req = req.into_inner();
        let (_, stream) = self.shard(&req.shard)?;
        let ids = ids(&req.ids)?;
        stream.replica.read_barrier().await?;
        let accounts = stream.replica.with_core(|c| {
            c.state.ledger().map_or_else(Vec::new, |l| {
                l.lookup_accounts(&ids).iter().map(account_to_pb).collect()
            })
        });
        Ok(Response::new(LookupAccountsResponse { accounts }))
    }

    async fn lookup_transfers(
        &self,
        req: Request<LookupTransfersRequest>,
    ) -> std::result::Result<Response<LookupTransfersResponse>, Status> {
        self.acl
            .check(&req, Operation::Ledger("LookupTransfers"), "")?;
        let req = req.into_inner();
        let (_, stream) = self.shard(&req.shard)?;
        let ids = ids(&req.ids)?;
        stream.replica.read_barrier().await?;
        let transfers = stream.replica.with_core(|c| {
            c.state.ledger().map_or_else(Vec::new, |l| {
                l.lookup_transfers(&ids)
                    .iter()
                    .map(transfer_to_pb)
                    .collect()
            })
        });
        Ok(Response::new(LookupTransfersResponse { transfers }))
    }

    async fn get_account_transfers(
        &self,
        req: Request<GetAccountTransfersRequest>,
    ) -> std::result::Result<Response<GetAccountTransfersResponse>, Status> {
        self.acl
            .check(&req, Operation::Ledger("GetAccountTransfers"), "")?;
        let req = req.into_inner();
        let (shard, stream) = self.shard(&req.shard)?;
        let id = from_pb(req.account_id.as_ref());
        self.owned(shard, "account", 0, id)?;
        stream.replica.read_barrier().await?;
        let limit = page(req.limit);
        let transfers = stream.replica.with_core(|c| {
            c.state.ledger().map_or_else(Vec::new, |l| {
                l.account_transfers(id, req.after_timestamp_ns, limit)
                    .iter()
                    .map(transfer_to_pb)
                    .collect()
            })
        });
        Ok(Response::new(GetAccountTransfersResponse { transfers }))
    }

    async fn list_accounts(
        &self,
        req: Request<ListAccountsRequest>,
    ) -> std::result::Result<Response<ListAccountsResponse>, Status> {
        self.acl
            .check(&req, Operation::Ledger("ListAccounts"), "")?;
        let req = req.into_inner();
        let (_, stream) = self.shard(&req.shard)?;
        let from = from_pb(req.from_id.as_ref());
        let to = req.to_id.as_ref().map_or(u128::MAX, |t| from_pb(Some(t)));
        if from > to {
            return Err(
                Error::InvalidArgument(format!("list accounts: from {from} > to {to}")).into(),
            );
        }
        stream.replica.read_barrier().await?;
        let limit = page(req.limit);
        let accounts = stream.replica.with_core(|c| {
            c.state.ledger().map_or_else(Vec::new, |l| {
                l.accounts_in_range(from, to, limit)
                    .iter()
                    .map(account_to_pb)
                    .collect()
            })
        });
        Ok(Response::new(ListAccountsResponse { accounts }))
    }

    async fn get_shard(
        &self,
        req: Request<GetShardRequest>,
    ) -> std::result::Result<Response<GetShardResponse>, Status> {
        self.acl.check(&req, Operation::Ledger("GetShard"), "")?;
        let req = req.into_inner();
        let (_, stream) = self.shard(&req.shard)?;
        let r = &stream.replica;
        if !req.local {
            r.read_barrier().await?;
        }
        let mut resp = r.with_core(|c| {
            let l = c.state.ledger();
            GetShardResponse {
                shard: req.shard.clone(),
                applied_index: c.applied.map_or(0, |a| a.index),
                state_hash: l.map_or_else(Vec::new, |l| l.state_hash().to_vec()),
                accounts: l.map_or(0, |l| l.account_count() as u64),
                transfers: l.map_or(0, |l| l.transfer_count() as u64),
                pending: l.map_or(0, |l| l.pending_count() as u64),
                last_timestamp_ns: l.map_or(0, |l| l.last_timestamp()),
                cross_transfers: l.map_or(0, |l| l.cross_count() as u64),
                cross_open: l.map_or(0, |l| l.open_cross_count() as u64),
                ..GetShardResponse::default()
            }
        });
        resp.leader = r.leader().map(|(_, n)| n.addr).unwrap_or_default();
        resp.is_leader = r.is_leader();
        resp.shards = self.shards();
        resp.partitioning = self.partitioning.to_string();
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all, fields(shard = %req.get_ref().shard))]
    async fn begin_cross_transfer(
        &self,
        req: Request<BeginCrossTransferRequest>,
    ) -> std::result::Result<Response<CrossTransferResponse>, Status> {
        self.acl
            .check(&req, Operation::Ledger("BeginCrossTransfer"), "")?;
        let req = req.into_inner();
        let (shard, stream) = self.shard(&req.shard)?;
        let t = cross_from_pb(req.transfer.as_ref())?;
        if t.debit_account_id != 0 {
            self.owned(shard, "debit account", 0, t.debit_account_id)?;
        }
        if t.legs[0].shard != shard || t.legs[1].shard >= self.shards() {
            return Err(Error::InvalidArgument(format!(
                "cross transfer {}: the debit leg must be on {} (the coordinator) and the credit leg on a shard of this cluster",
                t.id,
                shard_name(shard)
            ))
            .into());
        }
        match self
            .propose(stream, LedgerCommand::BeginCross(Box::new(t)))
            .await?
        {
            LedgerReply::Begun(r, rec) => Ok(Response::new(CrossTransferResponse {
                code: r as u32,
                name: r.as_str().to_string(),
                record: rec.map(|r| record_to_pb(&r)),
            })),
            other => Err(Error::Unavailable(format!("unexpected reply {other:?}")).into()),
        }
    }

    #[tracing::instrument(skip_all, fields(shard = %req.get_ref().shard))]
    async fn decide_cross_transfer(
        &self,
        req: Request<DecideCrossTransferRequest>,
    ) -> std::result::Result<Response<CrossTransferResponse>, Status> {
        self.acl
            .check(&req, Operation::Ledger("DecideCrossTransfer"), "")?;
        let req = req.into_inner();
        let (_, stream) = self.shard(&req.shard)?;
        let decision = match (pb::Decision::try_from(req.decision), req.abort_code) {
            (Ok(pb::Decision::Commit), 0) => Decision::Commit,
            (Ok(pb::Decision::Abort), code) => {
                match u8::try_from(code)
                    .ok()
                    .and_then(CreateTransferResult::from_code)
                {
                    Some(reason) if reason != CreateTransferResult::Ok => {
                        Decision::Abort { reason }
                    }
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "abort code {code} is not a failing transfer result"
                        ))
                        .into());
                    }
                }
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "decision {} with abort code {}: expected COMMIT (code 0) or ABORT",
                    req.decision, req.abort_code
                ))
                .into());
            }
        };
        let id = from_pb(req.id.as_ref());
        self.cross_reply(stream, LedgerCommand::DecideCross { id, decision })
            .await
    }

    #[tracing::instrument(skip_all, fields(shard = %req.get_ref().shard))]
    async fn complete_cross_transfer(
        &self,
        req: Request<CompleteCrossTransferRequest>,
    ) -> std::result::Result<Response<CrossTransferResponse>, Status> {
        self.acl
            .check(&req, Operation::Ledger("CompleteCrossTransfer"), "")?;
        let req = req.into_inner();
        let (_, stream) = self.shard(&req.shard)?;
        let id = from_pb(req.id.as_ref());
        self.cross_reply(stream, LedgerCommand::CompleteCross { id })
            .await
    }

    async fn list_open_cross_transfers(
        &self,
        req: Request<ListCrossTransfersRequest>,
    ) -> std::result::Result<Response<ListCrossTransfersResponse>, Status> {
        self.acl
            .check(&req, Operation::Ledger("ListOpenCrossTransfers"), "")?;
        let req = req.into_inner();
        let (_, stream) = self.shard(&req.shard)?;
        stream.replica.read_barrier().await?;
        let after = from_pb(req.after_id.as_ref());
        let limit = page(req.limit);
        let records = stream.replica.with_core(|c| {
            c.state.ledger().map_or_else(Vec::new, |l| {
                l.open_cross(after, limit)
                    .iter()
                    .map(record_to_pb)
                    .collect()
            })
        });
        Ok(Response::new(ListCrossTransfersResponse { records }))
    }
}

impl LedgerService {
    /// Proposes a Decide or Complete command and answers its result and record.
    async fn cross_reply(
        &self,
        stream: &Stream,
        command: LedgerCommand,
    ) -> std::result::Result<Response<CrossTransferResponse>, Status> {
        match self.propose(stream, command).await? {
            LedgerReply::Cross(r, rec) => Ok(Response::new(CrossTransferResponse {
                code: r as u32,
                name: r.as_str().to_string(),
                record: rec.map(|r| record_to_pb(&r)),
            })),
            other => Err(Error::Unavailable(format!("unexpected reply {other:?}")).into()),
        }
    }
}

/// A cross-shard transfer from the wire: exactly two legs, `code` within 16 bits.
fn cross_from_pb(t: Option<&pb::CrossTransfer>) -> Result<CrossTransfer> {
    let Some(t) = t else {
        return Err(Error::InvalidArgument(
            "begin cross transfer: no transfer".into(),
        ));
    };
    let [d, c] = t.legs.as_slice() else {
        return Err(Error::InvalidArgument(format!(
            "cross transfer: {} legs, expected 2 (debit, credit)",
            t.legs.len()
        )));
    };
    let leg = |l: &pb::CrossLeg| CrossLeg {
        shard: l.shard,
        hold_id: from_pb(l.hold_id.as_ref()),
        resolve_id: from_pb(l.resolve_id.as_ref()),
        debit_account_id: from_pb(l.debit_account_id.as_ref()),
        credit_account_id: from_pb(l.credit_account_id.as_ref()),
    };
    Ok(CrossTransfer {
        id: from_pb(t.id.as_ref()),
        debit_account_id: from_pb(t.debit_account_id.as_ref()),
        credit_account_id: from_pb(t.credit_account_id.as_ref()),
        amount: from_pb(t.amount.as_ref()),
        user_data: from_pb(t.user_data.as_ref()),
        ledger: t.ledger,
        code: u16_field(0, "code", t.code)?,
        legs: [leg(d), leg(c)],
        prepare_deadline_ns: t.prepare_deadline_ns,
    })
}

/// A row of the transaction table on the wire.
pub fn record_to_pb(r: &CrossRecord) -> pb::CrossRecord {
    let t = &r.transfer;
    let leg = |l: &CrossLeg| pb::CrossLeg {
        shard: l.shard,
        hold_id: to_pb(l.hold_id),
        resolve_id: to_pb(l.resolve_id),
        debit_account_id: to_pb(l.debit_account_id),
        credit_account_id: to_pb(l.credit_account_id),
    };
    let (decision, abort_code, abort_name) = match r.decision {
        None => (pb::Decision::None, 0, String::new()),
        Some(Decision::Commit) => (pb::Decision::Commit, 0, String::new()),
        Some(Decision::Abort { reason }) => (
            pb::Decision::Abort,
            reason as u32,
            reason.as_str().to_string(),
        ),
    };
    pb::CrossRecord {
        transfer: Some(pb::CrossTransfer {
            id: to_pb(t.id),
            debit_account_id: to_pb(t.debit_account_id),
            credit_account_id: to_pb(t.credit_account_id),
            amount: to_pb(t.amount),
            user_data: to_pb(t.user_data),
            ledger: t.ledger,
            code: u32::from(t.code),
            legs: t.legs.iter().map(leg).collect(),
            prepare_deadline_ns: t.prepare_deadline_ns,
        }),
        begun_at_ns: r.begun_at,
        decision: decision as i32,
        abort_code,
        abort_name,
        decided_at_ns: r.decided_at,
        completed_at_ns: r.completed_at,
    }
}

/// The wire form of a batch's results: `(event index, result)` pairs, each described by
/// `describe` as its numeric code and name.
fn event_results<R: Copy>(
    results: Vec<(u32, R)>,
    describe: fn(R) -> (u32, &'static str),
) -> Vec<EventResult> {
    results
        .into_iter()
        .map(|(index, r)| {
            let (code, name) = describe(r);
            EventResult {
                index,
                code,
                name: name.to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_legs_and_fences_of_cross_shard_transfers_may_name_reserved_accounts() {
        let t_id = 77u128;
        let ids = leg_ids(t_id);
        let clearing = clearing_account(1);
        let fence = fence_account(1);
        let hold = |id, dr, cr| Transfer {
            id,
            debit_account_id: dr,
            credit_account_id: cr,
            amount: 5,
            user_data: t_id,
            ledger: 1,
            code: 1,
            flags: TransferFlags::PENDING,
            ..Transfer::default()
        };
        let cases = [
            ("plain shard-local transfer", hold(9, 1, 2), true),
            ("debit leg", hold(ids.debit_hold, 1, clearing), true),
            ("credit leg", hold(ids.credit_hold, clearing, 1001), true),
            (
                "fence of the debit leg",
                hold(ids.debit_hold, clearing, fence),
                true,
            ),
            (
                "linked fence of the credit leg",
                Transfer {
                    flags: TransferFlags::PENDING | TransferFlags::LINKED,
                    ..hold(ids.credit_hold, clearing, fence)
                },
                true,
            ),
            (
                "post of a leg",
                Transfer {
                    pending_id: ids.debit_hold,
                    flags: TransferFlags::POST_PENDING_TRANSFER,
                    ..hold(ids.debit_resolve, 0, 0)
                },
                true,
            ),
            (
                "an id not derived from user data",
                hold(5, 1, clearing),
                false,
            ),
            (
                "the debit leg's id on the credit side",
                hold(ids.debit_hold, clearing, 1001),
                false,
            ),
            (
                "another ledger's clearing account",
                hold(ids.debit_hold, 1, clearing_account(2)),
                false,
            ),
            (
                "a plain transfer to the clearing account",
                Transfer {
                    flags: TransferFlags::default(),
                    ..hold(ids.debit_hold, 1, clearing)
                },
                false,
            ),
            (
                "a leg with a timeout",
                Transfer {
                    timeout_ms: 5,
                    ..hold(ids.debit_hold, 1, clearing)
                },
                false,
            ),
            (
                "the fence account as a leg",
                hold(ids.debit_hold, 1, fence),
                false,
            ),
        ];
        for (name, t, ok) in cases {
            assert_eq!(check_reserved(&t).is_ok(), ok, "{name}");
        }
    }
}
