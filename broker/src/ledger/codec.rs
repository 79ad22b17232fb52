//! Binary encodings of the ledger: snapshots of [`LedgerState`] (and its
//! [`LedgerState::state_hash`]) and [`LedgerCommand`]s for log entries.
//!
//! Little endian, fixed width. Records (the same in snapshots and commands):
//!
//! | record | layout | bytes |
//! |---|---|---|
//! | account | `id: u128`, `user_data: u128`, `debits_pending`, `debits_posted`, `credits_pending`, `credits_posted: u128`, `ledger: u32`, `code: u16`, `flags: u16`, `timestamp: u64` | 112 |
//! | transfer | `id`, `debit_account_id`, `credit_account_id`, `amount`, `pending_id`, `user_data: u128`, `timeout_ms: u64`, `ledger: u32`, `code: u16`, `flags: u16`, `timestamp: u64` | 120 |
//! | hold | `id: u128`, `status: u8` (1 pending, 2 posted, 3 voided, 4 expired), `expires_at: u64`, `resolved_by: u128`, `resolved_at: u64` | 49 |
//! | balance | `account_id: u128`, `timestamp: u64`, `debits_pending`, `debits_posted`, `credits_pending`, `credits_posted: u128` | 88 |
//!
//! | cross transfer | `id`, `debit_account_id`, `credit_account_id`, `amount`, `user_data: u128`, `ledger: u32`, `code: u16`, 2 × leg (`shard: u32`, `hold_id`, `resolve_id`, `debit_account_id`, `credit_account_id: u128`), `prepare_deadline_ns: u64` | 230 |
//! | cross record | cross transfer, `begun_at: u64`, `decision: u8` (0 none, 1 commit, 2 abort), `reason: u8` (the abort's transfer result code, else 0), `decided_at: u64`, `completed_at: u64` | 256 |
//!
//! Snapshot: `magic "TXLG"`, `version: u8`, `last_timestamp: u64`, then four sections
//! (accounts, transfers, holds, balances), each `count: u64` and the records in increasing
//! key order (ids; `(account, timestamp)` for balances). Version 2 adds a fifth section, the
//! cross-shard transaction table (cross records by id). A state whose table is empty is
//! written as version 1, byte for byte as before the table existed (so its state hash did
//! not change either); both versions decode. The indexes (per-account transfers,
//! expiry queue) are rebuilt on decode. Decoding checks everything a replica relies on and
//! returns a [`DecodeError`] instead of panicking: truncation, trailing bytes, unknown
//! version, flags and statuses, keys out of order, references to missing accounts or
//! transfers, holds that do not match their transfers, and balances that the transfers do
//! not add up to.
//!
//! Command: `version: u8 = 1`, `kind: u8` (1 `CreateAccounts`, 2 `CreateTransfers`,
//! 3 `ExpirePending`, 4 `BeginCross`, 5 `DecideCross`, 6 `CompleteCross`), then for kinds 1
//! and 2 `count: u32` and the records; for 4 a cross transfer; for 5 `id: u128`, `decision:
//! u8`, `reason: u8`; for 6 `id: u128`.

use std::collections::BTreeMap;

use super::LedgerCommand;
use super::cross::{CrossLeg, CrossRecord, CrossTransfer, Decision};
use super::state::{HoldState, LedgerState};
use super::types::{
    Account, AccountBalance, AccountFlags, CreateTransferResult, HoldStatus, Transfer,
    TransferFlags,
};

/// First bytes of an encoded [`LedgerState`].
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"TXLG";
/// Version of the snapshot encoding written by [`LedgerState::encode`] when the cross-shard
/// transaction table is not empty (version 1 otherwise, and version 1 still decodes).
pub const SNAPSHOT_VERSION: u8 = 2;
/// Version byte of an encoded [`LedgerCommand`].
pub const COMMAND_VERSION: u8 = 1;

const ACCOUNT_BYTES: usize = 112;
const TRANSFER_BYTES: usize = 120;
const HOLD_BYTES: usize = 49;
const BALANCE_BYTES: usize = 88;
const CROSS_TRANSFER_BYTES: usize = 230;
const CROSS_RECORD_BYTES: usize = 256;

/// A snapshot or command that can not be decoded; the message says what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger decode: {0}")]
pub struct DecodeError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

fn put_account(out: &mut Vec<u8>, a: &Account) {
    out.extend_from_slice(&a.id.to_le_bytes());
    out.extend_from_slice(&a.user_data.to_le_bytes());
    out.extend_from_slice(&a.debits_pending.to_le_bytes());
    out.extend_from_slice(&a.debits_posted.to_le_bytes());
    out.extend_from_slice(&a.credits_pending.to_le_bytes());
    out.extend_from_slice(&a.credits_posted.to_le_bytes());
    out.extend_from_slice(&a.ledger.to_le_bytes());
    out.extend_from_slice(&a.code.to_le_bytes());
    out.extend_from_slice(&a.flags.0.to_le_bytes());
    out.extend_from_slice(&a.timestamp.to_le_bytes());
}

fn put_transfer(out: &mut Vec<u8>, t: &Transfer) {
    out.extend_from_slice(&t.id.to_le_bytes());
    out.extend_from_slice(&t.debit_account_id.to_le_bytes());
    out.extend_from_slice(&t.credit_account_id.to_le_bytes());
    out.extend_from_slice(&t.amount.to_le_bytes());
    out.extend_from_slice(&t.pending_id.to_le_bytes());
    out.extend_from_slice(&t.user_data.to_le_bytes());
    out.extend_from_slice(&t.timeout_ms.to_le_bytes());
    out.extend_from_slice(&t.ledger.to_le_bytes());
    out.extend_from_slice(&t.code.to_le_bytes());
    out.extend_from_slice(&t.flags.0.to_le_bytes());
    out.extend_from_slice(&t.timestamp.to_le_bytes());
}

fn put_cross_transfer(out: &mut Vec<u8>, t: &CrossTransfer) {
    for v in [
        t.id,
        t.debit_account_id,
        t.credit_account_id,
        t.amount,
        t.user_data,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&t.ledger.to_le_bytes());
    out.extend_from_slice(&t.code.to_le_bytes());
    for l in &t.legs {
        out.extend_from_slice(&l.shard.to_le_bytes());
        for v in [
            l.hold_id,
            l.resolve_id,
            l.debit_account_id,
            l.credit_account_id,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.extend_from_slice(&t.prepare_deadline_ns.to_le_bytes());
}

/// `(decision, reason)` bytes of a decision.
fn decision_bytes(d: Option<Decision>) -> [u8; 2] {
    match d {
        None => [0, 0],
        Some(Decision::Commit) => [1, 0],
        Some(Decision::Abort { reason }) => [2, reason as u8],
    }
}

/// The decision of its bytes; `Err` for an unknown decision or reason, or an abort whose
/// reason is `ok`.
fn decision_of(d: u8, reason: u8) -> Result<Option<Decision>, DecodeError> {
    match (d, reason) {
        (0, 0) => Ok(None),
        (1, 0) => Ok(Some(Decision::Commit)),
        (2, r) => match CreateTransferResult::from_code(r) {
            Some(reason) if reason != CreateTransferResult::Ok => {
                Ok(Some(Decision::Abort { reason }))
            }
            _ => err(format!("unknown abort reason {r}")),
        },
        _ => err(format!("unknown decision {d} (reason {reason})")),
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return err(format!(
                "truncated at byte {} reading {what} ({n} bytes needed, {} left)",
                self.pos,
                self.buf.len() - self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn u128(&mut self, what: &str) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array(what)?))
    }

    /// A record count, refused when that many records of `size` bytes can not fit in what
    /// is left (so garbage never makes us allocate gigabytes).
    fn count(&mut self, wide: bool, size: usize, what: &str) -> Result<usize, DecodeError> {
        let n = if wide {
            self.u64(what)?
        } else {
            u64::from(self.u32(what)?)
        };
        let left = (self.buf.len() - self.pos) as u64;
        if n.checked_mul(size as u64).is_none_or(|b| b > left) {
            return err(format!(
                "{what} count {n} does not fit in the {left} bytes left"
            ));
        }
        Ok(n as usize)
    }

    fn account(&mut self) -> Result<Account, DecodeError> {
        Ok(Account {
            id: self.u128("account id")?,
            user_data: self.u128("account user_data")?,
            debits_pending: self.u128("debits_pending")?,
            debits_posted: self.u128("debits_posted")?,
            credits_pending: self.u128("credits_pending")?,
            credits_posted: self.u128("credits_posted")?,
            ledger: self.u32("account ledger")?,
            code: self.u16("account code")?,
            flags: AccountFlags(self.u16("account flags")?),
            timestamp: self.u64("account timestamp")?,
        })
    }

    fn transfer(&mut self) -> Result<Transfer, DecodeError> {
        Ok(Transfer {
            id: self.u128("transfer id")?,
            debit_account_id: self.u128("debit_account_id")?,
            credit_account_id: self.u128("credit_account_id")?,
            amount: self.u128("amount")?,
            pending_id: self.u128("pending_id")?,
            user_data: self.u128("transfer user_data")?,
            timeout_ms: self.u64("timeout_ms")?,
            ledger: self.u32("transfer ledger")?,
            code: self.u16("transfer code")?,
            flags: TransferFlags(self.u16("transfer flags")?),
            timestamp: self.u64("transfer timestamp")?,
        })
    }

    fn cross_transfer(&mut self) -> Result<CrossTransfer, DecodeError> {
        let mut t = CrossTransfer {
            id: self.u128("cross id")?,
            debit_account_id: self.u128("cross debit_account_id")?,
            credit_account_id: self.u128("cross credit_account_id")?,
            amount: self.u128("cross amount")?,
            user_data: self.u128("cross user_data")?,
            ledger: self.u32("cross ledger")?,
            code: self.u16("cross code")?,
            ..CrossTransfer::default()
        };
        for l in &mut t.legs {
            *l = CrossLeg {
                shard: self.u32("leg shard")?,
                hold_id: self.u128("leg hold_id")?,
                resolve_id: self.u128("leg resolve_id")?,
                debit_account_id: self.u128("leg debit_account_id")?,
                credit_account_id: self.u128("leg credit_account_id")?,
            };
        }
        t.prepare_deadline_ns = self.u64("prepare_deadline_ns")?;
        Ok(t)
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.pos != self.buf.len() {
            return err(format!(
                "{} trailing bytes after byte {}",
                self.buf.len() - self.pos,
                self.pos
            ));
        }
        Ok(())
    }
}

impl LedgerCommand {
    /// The command as a log entry (see the module docs of [`super::codec`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(COMMAND_VERSION);
        match self {
            LedgerCommand::CreateAccounts(batch) => {
                out.reserve(5 + batch.len() * ACCOUNT_BYTES);
                out.push(1);
                out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
                batch.iter().for_each(|a| put_account(&mut out, a));
            }
            LedgerCommand::CreateTransfers(batch) => {
                out.reserve(5 + batch.len() * TRANSFER_BYTES);
                out.push(2);
                out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
                batch.iter().for_each(|t| put_transfer(&mut out, t));
            }
            LedgerCommand::ExpirePending => out.push(3),
            LedgerCommand::BeginCross(t) => {
                out.push(4);
                put_cross_transfer(&mut out, t);
            }
            LedgerCommand::DecideCross { id, decision } => {
                out.push(5);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&decision_bytes(Some(*decision)));
            }
            LedgerCommand::CompleteCross { id } => {
                out.push(6);
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        out
    }

    /// Exact length of [`LedgerCommand::encode`]'s output, bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            LedgerCommand::CreateAccounts(batch) => 6 + batch.len() * ACCOUNT_BYTES,
            LedgerCommand::CreateTransfers(batch) => 6 + batch.len() * TRANSFER_BYTES,
            LedgerCommand::ExpirePending => 2,
            LedgerCommand::BeginCross(_) => 2 + CROSS_TRANSFER_BYTES,
            LedgerCommand::DecideCross { .. } => 2 + 18,
            LedgerCommand::CompleteCross { .. } => 2 + 16,
        }
    }

    /// Decodes [`LedgerCommand::encode`]'s output.
    ///
    /// Errors: unknown version or kind, truncation, trailing bytes. Field values are not
    /// checked here: the state machine answers bad ones with result codes.
    pub fn decode(buf: &[u8]) -> Result<LedgerCommand, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let version = r.u8("command version")?;
        if version != COMMAND_VERSION {
            return err(format!("unknown command version {version}"));
        }
        let cmd = match r.u8("command kind")? {
            1 => {
                let n = r.count(false, ACCOUNT_BYTES, "accounts")?;
                LedgerCommand::CreateAccounts(
                    (0..n).map(|_| r.account()).collect::<Result<_, _>>()?,
                )
            }
            2 => {
                let n = r.count(false, TRANSFER_BYTES, "transfers")?;
                LedgerCommand::CreateTransfers(
                    (0..n).map(|_| r.transfer()).collect::<Result<_, _>>()?,
                )
            }
            3 => LedgerCommand::ExpirePending,
            4 => LedgerCommand::BeginCross(Box::new(r.cross_transfer()?)),
            5 => {
                let id = r.u128("decide id")?;
                let d = r.u8("decision")?;
                let reason = r.u8("reason")?;
                match decision_of(d, reason)? {
                    Some(decision) => LedgerCommand::DecideCross { id, decision },
                    None => return err("a decide command without a decision"),
                }
            }
            6 => LedgerCommand::CompleteCross {
                id: r.u128("complete id")?,
            },
            k => return err(format!("unknown command kind {k}")),
        };
        r.end()?;
        Ok(cmd)
    }
}

impl LedgerState {
    /// The canonical encoding of the whole state (a snapshot; see the module docs of
    /// [`super::codec`]). Equal states give equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            13 + 32
                + self.accounts.len() * ACCOUNT_BYTES
                + self.transfers.len() * TRANSFER_BYTES
                + self.holds.len() * HOLD_BYTES
                + self.history.len() * BALANCE_BYTES,
        );
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.push(if self.cross.is_empty() {
            1
        } else {
            SNAPSHOT_VERSION
        });
        out.extend_from_slice(&self.last_timestamp.to_le_bytes());
        out.extend_from_slice(&(self.accounts.len() as u64).to_le_bytes());
        self.accounts
            .values()
            .for_each(|a| put_account(&mut out, a));
        out.extend_from_slice(&(self.transfers.len() as u64).to_le_bytes());
        self.transfers
            .values()
            .for_each(|t| put_transfer(&mut out, t));
        out.extend_from_slice(&(self.holds.len() as u64).to_le_bytes());
        for (id, h) in &self.holds {
            out.extend_from_slice(&id.to_le_bytes());
            out.push(h.status as u8);
            out.extend_from_slice(&h.expires_at.to_le_bytes());
            out.extend_from_slice(&h.resolved_by.to_le_bytes());
            out.extend_from_slice(&h.resolved_at.to_le_bytes());
        }
        out.extend_from_slice(&(self.history.len() as u64).to_le_bytes());
        for ((id, ts), b) in &self.history {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&ts.to_le_bytes());
            out.extend_from_slice(&b.debits_pending.to_le_bytes());
            out.extend_from_slice(&b.debits_posted.to_le_bytes());
            out.extend_from_slice(&b.credits_pending.to_le_bytes());
            out.extend_from_slice(&b.credits_posted.to_le_bytes());
        }
        if !self.cross.is_empty() {
            out.extend_from_slice(&(self.cross.len() as u64).to_le_bytes());
            for rec in self.cross.values() {
                put_cross_transfer(&mut out, &rec.transfer);
                out.extend_from_slice(&rec.begun_at.to_le_bytes());
                out.extend_from_slice(&decision_bytes(rec.decision));
                out.extend_from_slice(&rec.decided_at.to_le_bytes());
                out.extend_from_slice(&rec.completed_at.to_le_bytes());
            }
        }
        out
    }

    /// SHA-256 of [`LedgerState::encode`]: equal on every replica that applied the same
    /// commands. 32 bytes of a cryptographic hash rather than a 64-bit checksum, so that
    /// equal hashes can be taken as equal states without a birthday bound worth thinking
    /// about (the shard compares hashes of millions of states over its life); costs one pass
    /// over the encoded state (ring's SHA-256 does over 1 GB/s).
    pub fn state_hash(&self) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.encode());
        let mut h = [0u8; 32];
        h.copy_from_slice(d.as_ref());
        h
    }

    /// Decodes a snapshot written by [`LedgerState::encode`] and checks its consistency.
    ///
    /// Errors ([`DecodeError`], never a panic): wrong magic or version, truncation, trailing
    /// bytes, counts larger than the input, keys not strictly increasing, unknown flag bits
    /// or hold statuses, a transfer naming a missing account or a post/void naming a missing
    /// hold, holds that are not exactly the pending transfers, balances that differ from
    /// what the transfers and holds add up to, timestamps after `last_timestamp`.
    pub fn decode(buf: &[u8]) -> Result<LedgerState, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        if r.take(4, "magic")? != SNAPSHOT_MAGIC {
            return err("not a ledger snapshot (bad magic)");
        }
        let version = r.u8("version")?;
        if version != 1 && version != SNAPSHOT_VERSION {
            return err(format!("unknown snapshot version {version}"));
        }
        let mut s = LedgerState {
            last_timestamp: r.u64("last_timestamp")?,
            ..LedgerState::default()
        };
        let n = r.count(true, ACCOUNT_BYTES, "accounts")?;
        for _ in 0..n {
            let a = r.account()?;
            if s.accounts.last_key_value().is_some_and(|(k, _)| *k >= a.id) {
                return err(format!("account {} out of order", a.id));
            }
            if a.flags.0 & !AccountFlags::ALL.0 != 0 {
                return err(format!(
                    "account {} has unknown flags {:#x}",
                    a.id, a.flags.0
                ));
            }
            s.accounts.insert(a.id, a);
        }
        let n = r.count(true, TRANSFER_BYTES, "transfers")?;
        for _ in 0..n {
            let t = r.transfer()?;
            if s.transfers
                .last_key_value()
                .is_some_and(|(k, _)| *k >= t.id)
            {
                return err(format!("transfer {} out of order", t.id));
            }
            if t.flags.0 & !TransferFlags::ALL.0 != 0 {
                return err(format!(
                    "transfer {} has unknown flags {:#x}",
                    t.id, t.flags.0
                ));
            }
            for acc in [t.debit_account_id, t.credit_account_id] {
                if !s.accounts.contains_key(&acc) {
                    return err(format!("transfer {} names missing account {acc}", t.id));
                }
            }
            if t.debit_account_id == t.credit_account_id {
                return err(format!("transfer {} has one account on both sides", t.id));
            }
            if !s.by_account.insert((t.debit_account_id, t.timestamp, t.id))
                || !s
                    .by_account
                    .insert((t.credit_account_id, t.timestamp, t.id))
            {
                return err(format!("transfer {} repeats a timestamp", t.id));
            }
            s.transfers.insert(t.id, t);
        }
        let n = r.count(true, HOLD_BYTES, "holds")?;
        for _ in 0..n {
            let id = r.u128("hold id")?;
            let code = r.u8("hold status")?;
            let Some(status) = HoldStatus::from_code(code) else {
                return err(format!("hold {id} has unknown status {code}"));
            };
            let h = HoldState {
                status,
                expires_at: r.u64("expires_at")?,
                resolved_by: r.u128("resolved_by")?,
                resolved_at: r.u64("resolved_at")?,
            };
            if s.holds.last_key_value().is_some_and(|(k, _)| *k >= id) {
                return err(format!("hold {id} out of order"));
            }
            if !s
                .transfers
                .get(&id)
                .is_some_and(|t| t.flags.contains(TransferFlags::PENDING))
            {
                return err(format!("hold {id} is not a pending transfer"));
            }
            if status == HoldStatus::Pending && h.expires_at != 0 {
                s.expiries.insert((h.expires_at, id));
            }
            s.holds.insert(id, h);
        }
        let n = r.count(true, BALANCE_BYTES, "balances")?;
        for _ in 0..n {
            let id = r.u128("balance account")?;
            let ts = r.u64("balance timestamp")?;
            let b = AccountBalance {
                timestamp: ts,
                debits_pending: r.u128("balance debits_pending")?,
                debits_posted: r.u128("balance debits_posted")?,
                credits_pending: r.u128("balance credits_pending")?,
                credits_posted: r.u128("balance credits_posted")?,
            };
            if s.history
                .last_key_value()
                .is_some_and(|(k, _)| *k >= (id, ts))
            {
                return err(format!("balance ({id}, {ts}) out of order"));
            }
            if !s.accounts.contains_key(&id) {
                return err(format!("balance of missing account {id}"));
            }
            s.history.insert((id, ts), b);
        }
        if version >= 2 {
            let n = r.count(true, CROSS_RECORD_BYTES, "cross transfers")?;
            if n == 0 {
                return err("a version 2 snapshot with an empty cross-shard table");
            }
            for _ in 0..n {
                let transfer = r.cross_transfer()?;
                let id = transfer.id;
                let begun_at = r.u64("begun_at")?;
                let d = r.u8("decision")?;
                let reason = r.u8("reason")?;
                let rec = CrossRecord {
                    transfer,
                    begun_at,
                    decision: decision_of(d, reason)?,
                    decided_at: r.u64("decided_at")?,
                    completed_at: r.u64("completed_at")?,
                };
                if s.cross.last_key_value().is_some_and(|(k, _)| *k >= id) {
                    return err(format!("cross transfer {id} out of order"));
                }
                if rec.decision.is_some() != (rec.decided_at != 0)
                    || (rec.completed_at != 0 && rec.decision.is_none())
                {
                    return err(format!("cross transfer {id} has an inconsistent decision"));
                }
                if [rec.begun_at, rec.decided_at, rec.completed_at]
                    .iter()
                    .any(|t| *t > s.last_timestamp)
                {
                    return err(format!("cross transfer {id} is after last_timestamp"));
                }
                if rec.completed_at == 0 {
                    s.open_cross.insert(id);
                }
                s.cross.insert(id, rec);
            }
        }
        r.end()?;
        s.check_consistency().map_err(DecodeError)?;
        Ok(s)
    }

    /// Recomputes every balance from the transfers and holds and compares: `Err` names the
    /// first mismatch. Also checks that holds are exactly the pending transfers, that every
    /// post or void names a hold it resolved, and that no timestamp passes
    /// `last_timestamp`. O(accounts + transfers); used by [`LedgerState::decode`] and tests.
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut bal: BTreeMap<u128, [u128; 4]> =
            self.accounts.keys().map(|id| (*id, [0u128; 4])).collect();
        let add = |bal: &mut BTreeMap<u128, [u128; 4]>, acc: u128, i: usize, v: u128| match bal
            .get_mut(&acc)
        {
            Some(b) => match b[i].checked_add(v) {
                Some(x) => {
                    b[i] = x;
                    Ok(())
                }
                None => Err(format!("balances of account {acc} overflow")),
            },
            None => Err(format!("missing account {acc}")),
        };
        for a in self.accounts.values() {
            if a.timestamp > self.last_timestamp {
                return Err(format!("account {} is after last_timestamp", a.id));
            }
        }
        for t in self.transfers.values() {
            if t.timestamp > self.last_timestamp {
                return Err(format!("transfer {} is after last_timestamp", t.id));
            }
            let resolving = t.flags.contains(TransferFlags::POST_PENDING_TRANSFER)
                || t.flags.contains(TransferFlags::VOID_PENDING_TRANSFER);
            if t.flags.contains(TransferFlags::PENDING) {
                let Some(h) = self.holds.get(&t.id) else {
                    return Err(format!("pending transfer {} has no hold", t.id));
                };
                if h.status == HoldStatus::Pending {
                    add(&mut bal, t.debit_account_id, 0, t.amount)?;
                    add(&mut bal, t.credit_account_id, 2, t.amount)?;
                }
            } else if resolving {
                let resolved = self
                    .holds
                    .get(&t.pending_id)
                    .is_some_and(|h| h.resolved_by == t.id);
                if !resolved {
                    return Err(format!("transfer {} resolves no hold", t.id));
                }
                if t.flags.contains(TransferFlags::POST_PENDING_TRANSFER) {
                    add(&mut bal, t.debit_account_id, 1, t.amount)?;
                    add(&mut bal, t.credit_account_id, 3, t.amount)?;
                }
            } else {
                add(&mut bal, t.debit_account_id, 1, t.amount)?;
                add(&mut bal, t.credit_account_id, 3, t.amount)?;
            }
        }
        for (id, h) in &self.holds {
            if !self
                .transfers
                .get(id)
                .is_some_and(|t| t.flags.contains(TransferFlags::PENDING))
            {
                return Err(format!("hold {id} is not a pending transfer"));
            }
            let want_resolver = matches!(h.status, HoldStatus::Posted | HoldStatus::Voided);
            if want_resolver != (h.resolved_by != 0)
                || (h.status == HoldStatus::Pending) != (h.resolved_at == 0)
            {
                return Err(format!("hold {id} has an inconsistent resolution"));
            }
            if h.resolved_at > self.last_timestamp {
                return Err(format!("hold {id} is resolved after last_timestamp"));
            }
        }
        for a in self.accounts.values() {
            let b = bal[&a.id];
            if [
                a.debits_pending,
                a.debits_posted,
                a.credits_pending,
                a.credits_posted,
            ] != b
            {
                return Err(format!(
                    "balances of account {} differ from its transfers",
                    a.id
                ));
            }
        }
        Ok(())
    }
}
