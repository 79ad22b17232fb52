//! The ledger: double-entry accounts and transfers with TigerBeetle's semantics, as a pure,
//! deterministic state machine (issue 15). No I/O, no clock, no threads: a Raft group's
//! apply calls [`LedgerState::apply`] with each committed [`LedgerCommand`] and the time the
//! leader stamped on the entry, and every replica ends in the same state with the same
//! [`LedgerState::state_hash`].
//!
//! - [`types`]: [`Account`], [`Transfer`], their flags, [`Hold`]s and the result codes
//!   [`CreateAccountResult`] / [`CreateTransferResult`].
//! - [`state`]: [`LedgerState`], its commands and its reads.
//! - [`cross`]: the transaction table of cross-shard transfers (two-phase commit): begin,
//!   write-once decide, complete; and the clearing accounts the state machine creates.
//! - [`codec`]: the binary encodings of snapshots (and the state hash) and of commands.
//!
//! `docs/ledger.md` describes the semantics in full; in short:
//!
//! - **Accounts** have four balances (`debits_pending`, `debits_posted`, `credits_pending`,
//!   `credits_posted`) that only transfers change, and optional limits
//!   (`debits_must_not_exceed_credits`, `credits_must_not_exceed_debits`) checked against
//!   pending plus posted amounts.
//! - **Transfers** are immutable and identified by a client-chosen id: resending the same id
//!   answers `exists` (or `exists_with_different_<field>`), never a second transfer.
//! - **Holds** (pending transfers) reserve an amount; a later transfer posts (all or part,
//!   the rest is released) or voids it, at most once; a hold with a timeout expires when a
//!   batch's time reaches its deadline.
//! - **Linked events** (the linked flag chains an event to the next) succeed or fail
//!   together; nothing of a failed chain is applied.
//!
//! Units and widths:
//!
//! - **Ids are `u128`**, as in TigerBeetle: clients choose them (random or time-ordered
//!   ULID-like ids) without coordination, and 128 bits make collisions between independent
//!   clients negligible; the id is also the idempotency key. Seed 004's account numbers
//!   (1–3000) are just small ids. 0 and `u128::MAX` are reserved.
//! - **Amounts and balances are `u128` minor units** (cents for EUR). A `u64` would hold any
//!   single card payment, but balances are running sums that never decrease
//!   (`debits_posted` of a clearing account grows with every transfer of its life), and
//!   assets with 18 decimals pass `u64::MAX` (1.8 × 10^19) at 18 whole units. With `u128`
//!   the overflow checks stay (every sum is `checked_add`, with its own `overflows_*` code)
//!   but are never hit by real traffic. On the wire (protobuf has no 128-bit integer) an
//!   amount is two `u64` halves. Negative amounts are unrepresentable here; the API
//!   refuses them before they reach the state machine.
//! - **Timestamps are `u64` nanoseconds since the Unix epoch**, assigned by the state
//!   machine: event `i` of a batch applied at time `now` gets `max(now, last + 1) + i`, so
//!   they are unique and strictly increasing (they order an account's history) and stay
//!   close to wall time at a million events per second, which milliseconds would not.
//!   `u64` nanoseconds last until the year 2554.
//! - **Timeouts are `u64` milliseconds** after the hold's timestamp.

pub mod codec;
pub mod cross;
pub mod state;
pub mod types;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub use codec::DecodeError;
pub use cross::{CrossLeg, CrossRecord, CrossResult, CrossTransfer, Decision};
pub use state::{LedgerState, NS_PER_MS};
pub use types::{
    Account, AccountBalance, AccountFlags, CreateAccountResult, CreateTransferResult, Hold,
    HoldStatus, Transfer, TransferFlags,
};

/// A command of a ledger shard's log: what one Raft entry holds ([`LedgerCommand::encode`]
/// gives its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerCommand {
    /// [`LedgerState::create_accounts`] of the batch.
    CreateAccounts(Vec<Account>),
    /// [`LedgerState::create_transfers`] of the batch (expires due holds first).
    CreateTransfers(Vec<Transfer>),
    /// [`LedgerState::expire_pending`]: a leader proposes it periodically so that holds are
    /// released when no transfers arrive.
    ExpirePending,
    /// [`LedgerState::begin_cross`]: record a cross-shard transfer this shard coordinates.
    BeginCross(Box<CrossTransfer>),
    /// [`LedgerState::decide_cross`]: write-once decision of a cross-shard transfer.
    DecideCross {
        /// The cross-shard transfer's id.
        id: u128,
        /// Commit or abort (with the reason).
        decision: Decision,
    },
    /// [`LedgerState::complete_cross`]: both legs resolved as decided.
    CompleteCross {
        /// The cross-shard transfer's id.
        id: u128,
    },
}

/// What [`LedgerState::apply`] answers, by command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerReply {
    /// One `(index in batch, result)` per account, in batch order.
    Accounts(Vec<(u32, CreateAccountResult)>),
    /// One `(index in batch, result)` per transfer, in batch order.
    Transfers(Vec<(u32, CreateTransferResult)>),
    /// Ids of the holds that expired, in order of deadline.
    Expired(Vec<u128>),
    /// The result of [`LedgerCommand::BeginCross`] and the record as it is now (`None` when
    /// refused).
    Begun(CreateTransferResult, Option<Box<CrossRecord>>),
    /// The result of [`LedgerCommand::DecideCross`] or [`LedgerCommand::CompleteCross`] and
    /// the record as it is now (`None` when not found).
    Cross(CrossResult, Option<Box<CrossRecord>>),
}

impl LedgerState {
    /// Applies one committed command at `now_ns`, the time (nanoseconds since the Unix
    /// epoch) the leader stamped on its log entry. Deterministic: the same state, command
    /// and time give the same reply and state on every replica.
    pub fn apply(&mut self, cmd: &LedgerCommand, now_ns: u64) -> LedgerReply {
        match cmd {
            LedgerCommand::CreateAccounts(batch) => {
                LedgerReply::Accounts(self.create_accounts(batch, now_ns))
            }
            LedgerCommand::CreateTransfers(batch) => {
                LedgerReply::Transfers(self.create_transfers(batch, now_ns))
            }
            LedgerCommand::ExpirePending => LedgerReply::Expired(self.expire_pending(now_ns)),
            LedgerCommand::BeginCross(t) => {
                let (r, rec) = self.begin_cross(t, now_ns);
                LedgerReply::Begun(r, rec.map(Box::new))
            }
            LedgerCommand::DecideCross { id, decision } => {
                let (r, rec) = self.decide_cross(*id, *decision, now_ns);
                LedgerReply::Cross(r, rec.map(Box::new))
            }
            LedgerCommand::CompleteCross { id } => {
                let (r, rec) = self.complete_cross(*id, now_ns);
                LedgerReply::Cross(r, rec.map(Box::new))
            }
        }
    }
}
