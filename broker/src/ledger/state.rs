//! [`LedgerState`]: the deterministic state machine of one ledger shard.
//!
//! Applied single-threaded, in log order; every input (including time) comes from the
//! arguments, so replicas that apply the same commands with the same times hold equal states
//! and equal [`LedgerState::state_hash`]es. See the module docs of [`crate::ledger`] for the
//! semantics and `docs/ledger.md` for the whole story.

use std::collections::{BTreeMap, BTreeSet};

use txpipe_client::ledger::{CLEARING_ACCOUNT_CODE, clearing_ledger};

use super::cross::CrossRecord;
use super::types::{
    Account, AccountBalance, AccountFlags, CreateAccountResult, CreateTransferResult, Hold,
    HoldStatus, Transfer, TransferFlags,
};

/// Nanoseconds per millisecond (transfer timeouts are in milliseconds, timestamps in ns).
pub const NS_PER_MS: u64 = 1_000_000;

/// The state of a hold, beside the pending transfer itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HoldState {
    pub(super) status: HoldStatus,
    /// 0: never expires.
    pub(super) expires_at: u64,
    pub(super) resolved_by: u128,
    pub(super) resolved_at: u64,
}

/// What to undo to roll a linked chain back, in reverse order.
#[derive(Debug)]
enum Undo {
    /// Remove a created account.
    AccountCreated(u128),
    /// Restore an account's previous balances.
    Account(Account),
    /// Remove a stored transfer and its per-account index entries.
    TransferCreated(Transfer),
    /// Remove a created hold (and its expiry entry).
    HoldCreated(u128),
    /// Restore a hold's previous state (its expiry entry too when it was pending).
    Hold(u128, HoldState),
    /// Remove a history entry.
    History(u128, u64),
}

/// The ledger of one shard: accounts, every applied transfer (the history, used for
/// idempotency and lookups), holds and their states, and balance histories.
///
/// Iteration order is the order of ids or timestamps everywhere (B-trees only), so
/// [`LedgerState::encode`] and [`LedgerState::state_hash`] are canonical.
///
/// Memory: about 200 bytes per account, 250 per transfer, 60 more per hold and 100 per
/// history entry (accounts with [`AccountFlags::HISTORY`], one per change). Transfers are
/// never forgotten: they are the ledger's history and its idempotency table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerState {
    pub(super) accounts: BTreeMap<u128, Account>,
    pub(super) transfers: BTreeMap<u128, Transfer>,
    /// Keyed by the pending transfer's id.
    pub(super) holds: BTreeMap<u128, HoldState>,
    /// `(expires_at, id)` of holds still pending with a timeout.
    pub(super) expiries: BTreeSet<(u64, u128)>,
    /// `(account id, timestamp, transfer id)` for both accounts of every transfer.
    pub(super) by_account: BTreeSet<(u128, u64, u128)>,
    /// `(account id, timestamp)` → balances after that change, for history accounts.
    pub(super) history: BTreeMap<(u128, u64), AccountBalance>,
    /// The greatest timestamp handed out so far (0: none).
    pub(super) last_timestamp: u64,
    /// The transaction table of cross-shard transfers this shard coordinates, by id.
    pub(super) cross: BTreeMap<u128, CrossRecord>,
    /// Ids of the incomplete ones (an index over `cross`, rebuilt on decode).
    pub(super) open_cross: BTreeSet<u128>,
}

/// Runs `n` events as linked chains: an event with the linked flag is chained to the next.
/// A chain succeeds as a whole or is rolled back as a whole; the event that failed keeps
/// its own result and the others of its chain get `failed`; a chain still open at the end
/// of the batch is not applied, its last event gets `open` and the others `failed`.
fn run_chains<R: Copy + PartialEq>(
    state: &mut LedgerState,
    n: usize,
    linked: impl Fn(usize) -> bool,
    mut apply: impl FnMut(&mut LedgerState, usize, &mut Vec<Undo>) -> R,
    ok: R,
    failed: R,
    open: R,
) -> Vec<(u32, R)> {
    let mut results = vec![ok; n];
    let mut undo = Vec::new();
    let mut i = 0;
    while i < n {
        let mut end = i;
        while end < n && linked(end) {
            end += 1;
        }
        if end == n {
            // Open chain: never applied.
            for r in &mut results[i..n] {
                *r = failed;
            }
            results[n - 1] = open;
            break;
        }
        undo.clear();
        for k in i..=end {
            let r = apply(state, k, &mut undo);
            if r != ok {
                state.rollback(&mut undo);
                for res in &mut results[i..=end] {
                    *res = failed;
                }
                results[k] = r;
                break;
            }
        }
        i = end + 1;
    }
    results
        .into_iter()
        .enumerate()
        .map(|(k, r)| (k as u32, r))
        .collect()
}

impl LedgerState {
    /// An empty ledger.
    pub fn new() -> LedgerState {
        LedgerState::default()
    }

    /// The greatest timestamp handed out so far (nanoseconds; 0 for an empty ledger).
    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }

    /// Number of accounts.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Number of transfers (plain, holds, posts and voids).
    pub fn transfer_count(&self) -> usize {
        self.transfers.len()
    }

    /// Number of holds still pending.
    pub fn pending_count(&self) -> usize {
        self.holds
            .values()
            .filter(|h| h.status == HoldStatus::Pending)
            .count()
    }

    /// Reserves `n` consecutive timestamps for a batch stamped `now_ns` (the leader's time
    /// of the log entry) and returns the first: `max(now_ns, last + 1)`, so timestamps
    /// strictly increase across batches even when the leader's clock goes back.
    fn reserve_timestamps(&mut self, now_ns: u64, n: usize) -> u64 {
        let base = now_ns.max(self.last_timestamp.saturating_add(1));
        if n > 0 {
            self.last_timestamp = base.saturating_add(n as u64 - 1);
        }
        base
    }

    /// Reserves one timestamp for a single command at `now_ns` and returns it.
    pub(super) fn reserve_one(&mut self, now_ns: u64) -> u64 {
        self.reserve_timestamps(now_ns, 1)
    }

    /// The account `id`, or, when `id` is a clearing account
    /// ([`txpipe_client::ledger::clearing_account`]) that does not exist yet, that clearing
    /// account created now (no limits, `code` [`CLEARING_ACCOUNT_CODE`], the ledger taken
    /// from the id), with an undo entry so that a failed event leaves nothing behind.
    fn account_or_clearing(
        &mut self,
        id: u128,
        timestamp: u64,
        undo: &mut Vec<Undo>,
    ) -> Option<Account> {
        if let Some(a) = self.accounts.get(&id) {
            return Some(*a);
        }
        let ledger = clearing_ledger(id)?;
        let a = Account {
            id,
            ledger,
            code: CLEARING_ACCOUNT_CODE,
            timestamp,
            ..Account::default()
        };
        self.accounts.insert(id, a);
        undo.push(Undo::AccountCreated(id));
        Some(a)
    }

    /// Creates a batch of accounts at `now_ns` (nanoseconds since the Unix epoch, the
    /// leader-stamped time of the log entry; never a replica's clock).
    ///
    /// Account `i` gets timestamp `base + i`, where `base = max(now_ns, last_timestamp + 1)`.
    /// Returns one `(index in batch, result)` per account, in order; linked accounts succeed
    /// or fail together. Idempotent: an account that exists with the same fields answers
    /// [`CreateAccountResult::Exists`] and changes nothing.
    pub fn create_accounts(
        &mut self,
        batch: &[Account],
        now_ns: u64,
    ) -> Vec<(u32, CreateAccountResult)> {
        let base = self.reserve_timestamps(now_ns, batch.len());
        run_chains(
            self,
            batch.len(),
            |k| batch[k].flags.contains(AccountFlags::LINKED),
            |s, k, undo| s.create_account(&batch[k], base + k as u64, undo),
            CreateAccountResult::Ok,
            CreateAccountResult::LinkedEventFailed,
            CreateAccountResult::LinkedEventChainOpen,
        )
    }

    fn create_account(
        &mut self,
        a: &Account,
        timestamp: u64,
        undo: &mut Vec<Undo>,
    ) -> CreateAccountResult {
        use CreateAccountResult as R;
        if a.timestamp != 0 {
            return R::TimestampMustBeZero;
        }
        if a.flags.0 & !AccountFlags::ALL.0 != 0 {
            return R::ReservedFlag;
        }
        if a.id == 0 {
            return R::IdMustNotBeZero;
        }
        if a.id == u128::MAX {
            return R::IdMustNotBeIntMax;
        }
        if a.flags.contains(
            AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
                | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
        ) {
            return R::FlagsAreMutuallyExclusive;
        }
        if a.debits_pending != 0 {
            return R::DebitsPendingMustBeZero;
        }
        if a.debits_posted != 0 {
            return R::DebitsPostedMustBeZero;
        }
        if a.credits_pending != 0 {
            return R::CreditsPendingMustBeZero;
        }
        if a.credits_posted != 0 {
            return R::CreditsPostedMustBeZero;
        }
        if a.ledger == 0 {
            return R::LedgerMustNotBeZero;
        }
        if a.code == 0 {
            return R::CodeMustNotBeZero;
        }
        if let Some(e) = self.accounts.get(&a.id) {
            return if e.flags != a.flags {
                R::ExistsWithDifferentFlags
            } else if e.user_data != a.user_data {
                R::ExistsWithDifferentUserData
            } else if e.ledger != a.ledger {
                R::ExistsWithDifferentLedger
            } else if e.code != a.code {
                R::ExistsWithDifferentCode
            } else {
                R::Exists
            };
        }
        self.accounts.insert(a.id, Account { timestamp, ..*a });
        undo.push(Undo::AccountCreated(a.id));
        R::Ok
    }

    /// Applies a batch of transfers at `now_ns` (nanoseconds since the Unix epoch, the
    /// leader-stamped time of the log entry; never a replica's clock).
    ///
    /// First expires every hold whose deadline is at or before `base = max(now_ns,
    /// last_timestamp + 1)` ([`LedgerState::expire_pending`], which takes a timestamp per
    /// expired hold); then transfer `i` gets the timestamp after those plus `i`. Returns one
    /// `(index in batch, result)` per transfer, in order; linked transfers succeed or fail
    /// together and nothing of a failed event or chain is applied. Idempotent per transfer
    /// id (see [`CreateTransferResult::Exists`]).
    pub fn create_transfers(
        &mut self,
        batch: &[Transfer],
        now_ns: u64,
    ) -> Vec<(u32, CreateTransferResult)> {
        self.expire_pending(now_ns);
        let base = self.reserve_timestamps(now_ns, batch.len());
        run_chains(
            self,
            batch.len(),
            |k| batch[k].flags.contains(TransferFlags::LINKED),
            |s, k, undo| s.create_transfer(&batch[k], base + k as u64, undo),
            CreateTransferResult::Ok,
            CreateTransferResult::LinkedEventFailed,
            CreateTransferResult::LinkedEventChainOpen,
        )
    }

    /// The earliest deadline (ns) of a pending hold with a timeout, if any: a leader proposes
    /// [`super::LedgerCommand::ExpirePending`] once its clock has passed it.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// Expires, in order of deadline then id, every pending hold whose deadline
    /// (`timestamp + timeout_ms`) is at or before `max(now_ns, last_timestamp + 1)`: releases
    /// its pending amounts and marks it [`HoldStatus::Expired`]. Each expiry takes the next
    /// timestamp (its `resolved_at`, and the history entry of history accounts). Returns the
    /// ids of the expired holds.
    pub fn expire_pending(&mut self, now_ns: u64) -> Vec<u128> {
        let horizon = now_ns.max(self.last_timestamp.saturating_add(1));
        let due: Vec<(u64, u128)> = self
            .expiries
            .range(..=(horizon, u128::MAX))
            .copied()
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        let base = self.reserve_timestamps(now_ns, due.len());
        let mut ids = Vec::with_capacity(due.len());
        for (k, entry) in due.into_iter().enumerate() {
            let (_, id) = entry;
            let timestamp = base + k as u64;
            self.expiries.remove(&entry);
            let p = self.transfers[&id];
            // Pending amounts were reserved when the hold was created, so they can be
            // released without underflow (an invariant the property test checks).
            let mut dr = self.accounts[&p.debit_account_id];
            let mut cr = self.accounts[&p.credit_account_id];
            dr.debits_pending -= p.amount;
            cr.credits_pending -= p.amount;
            self.accounts.insert(dr.id, dr);
            self.accounts.insert(cr.id, cr);
            if let Some(h) = self.holds.get_mut(&id) {
                h.status = HoldStatus::Expired;
                h.resolved_at = timestamp;
            }
            self.record_history(&dr, timestamp, &mut Vec::new());
            self.record_history(&cr, timestamp, &mut Vec::new());
            ids.push(id);
        }
        ids
    }

    fn create_transfer(
        &mut self,
        t: &Transfer,
        timestamp: u64,
        undo: &mut Vec<Undo>,
    ) -> CreateTransferResult {
        use CreateTransferResult as R;
        if t.timestamp != 0 {
            return R::TimestampMustBeZero;
        }
        if t.flags.0 & !TransferFlags::ALL.0 != 0 {
            return R::ReservedFlag;
        }
        if t.id == 0 {
            return R::IdMustNotBeZero;
        }
        if t.id == u128::MAX {
            return R::IdMustNotBeIntMax;
        }
        if let Some(e) = self.transfers.get(&t.id) {
            return transfer_exists(t, e);
        }
        let post = t.flags.contains(TransferFlags::POST_PENDING_TRANSFER);
        let void = t.flags.contains(TransferFlags::VOID_PENDING_TRANSFER);
        let pending = t.flags.contains(TransferFlags::PENDING);
        if (post as u8 + void as u8 + pending as u8) > 1 {
            return R::FlagsAreMutuallyExclusive;
        }
        if post || void {
            return self.post_or_void(t, timestamp, post, undo);
        }
        if t.debit_account_id == 0 {
            return R::DebitAccountIdMustNotBeZero;
        }
        if t.debit_account_id == u128::MAX {
            return R::DebitAccountIdMustNotBeIntMax;
        }
        if t.credit_account_id == 0 {
            return R::CreditAccountIdMustNotBeZero;
        }
        if t.credit_account_id == u128::MAX {
            return R::CreditAccountIdMustNotBeIntMax;
        }
        if t.debit_account_id == t.credit_account_id {
            return R::AccountsMustBeDifferent;
        }
        if t.pending_id != 0 {
            return R::PendingIdMustBeZero;
        }
        if !pending && t.timeout_ms != 0 {
            return R::TimeoutReservedForPendingTransfer;
        }
        if t.amount == 0 {
            return R::AmountMustNotBeZero;
        }
        if t.ledger == 0 {
            return R::LedgerMustNotBeZero;
        }
        if t.code == 0 {
            return R::CodeMustNotBeZero;
        }
        let Some(dr) = self.account_or_clearing(t.debit_account_id, timestamp, undo) else {
            return R::DebitAccountNotFound;
        };
        let Some(cr) = self.account_or_clearing(t.credit_account_id, timestamp, undo) else {
            return R::CreditAccountNotFound;
        };
        if dr.ledger != cr.ledger {
            return R::AccountsMustHaveTheSameLedger;
        }
        if t.ledger != dr.ledger {
            return R::TransferMustHaveTheSameLedgerAsAccounts;
        }
        let mut dr2 = dr;
        let mut cr2 = cr;
        if pending {
            let Some(v) = dr.debits_pending.checked_add(t.amount) else {
                return R::OverflowsDebitsPending;
            };
            dr2.debits_pending = v;
            let Some(v) = cr.credits_pending.checked_add(t.amount) else {
                return R::OverflowsCreditsPending;
            };
            cr2.credits_pending = v;
        } else {
            let Some(v) = dr.debits_posted.checked_add(t.amount) else {
                return R::OverflowsDebitsPosted;
            };
            dr2.debits_posted = v;
            let Some(v) = cr.credits_posted.checked_add(t.amount) else {
                return R::OverflowsCreditsPosted;
            };
            cr2.credits_posted = v;
        }
        let Some(dr_total) = dr2.debits_pending.checked_add(dr2.debits_posted) else {
            return R::OverflowsDebits;
        };
        let Some(cr_total) = cr2.credits_pending.checked_add(cr2.credits_posted) else {
            return R::OverflowsCredits;
        };
        let mut expires_at = 0;
        if pending && t.timeout_ms != 0 {
            match t
                .timeout_ms
                .checked_mul(NS_PER_MS)
                .and_then(|d| timestamp.checked_add(d))
            {
                Some(v) => expires_at = v,
                None => return R::OverflowsTimeout,
            }
        }
        if dr
            .flags
            .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
            && dr_total > dr.credits_posted
        {
            return R::ExceedsCredits;
        }
        if cr
            .flags
            .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
            && cr_total > cr.debits_posted
        {
            return R::ExceedsDebits;
        }
        // Apply.
        let stored = Transfer { timestamp, ..*t };
        self.set_account(dr2, dr, undo);
        self.set_account(cr2, cr, undo);
        self.insert_transfer(stored, undo);
        if pending {
            self.holds.insert(
                t.id,
                HoldState {
                    status: HoldStatus::Pending,
                    expires_at,
                    resolved_by: 0,
                    resolved_at: 0,
                },
            );
            if expires_at != 0 {
                self.expiries.insert((expires_at, t.id));
            }
            undo.push(Undo::HoldCreated(t.id));
        }
        self.record_history(&dr2, timestamp, undo);
        self.record_history(&cr2, timestamp, undo);
        R::Ok
    }

    fn post_or_void(
        &mut self,
        t: &Transfer,
        timestamp: u64,
        post: bool,
        undo: &mut Vec<Undo>,
    ) -> CreateTransferResult {
        use CreateTransferResult as R;
        if t.debit_account_id == u128::MAX {
            return R::DebitAccountIdMustNotBeIntMax;
        }
        if t.credit_account_id == u128::MAX {
            return R::CreditAccountIdMustNotBeIntMax;
        }
        if t.debit_account_id != 0 && t.debit_account_id == t.credit_account_id {
            return R::AccountsMustBeDifferent;
        }
        if t.pending_id == 0 {
            return R::PendingIdMustNotBeZero;
        }
        if t.pending_id == u128::MAX {
            return R::PendingIdMustNotBeIntMax;
        }
        if t.pending_id == t.id {
            return R::PendingIdMustBeDifferent;
        }
        if t.timeout_ms != 0 {
            return R::TimeoutReservedForPendingTransfer;
        }
        let Some(&p) = self.transfers.get(&t.pending_id) else {
            return R::PendingTransferNotFound;
        };
        let Some(&hold) = self.holds.get(&t.pending_id) else {
            return R::PendingTransferNotPending;
        };
        if t.debit_account_id != 0 && t.debit_account_id != p.debit_account_id {
            return R::PendingTransferHasDifferentDebitAccountId;
        }
        if t.credit_account_id != 0 && t.credit_account_id != p.credit_account_id {
            return R::PendingTransferHasDifferentCreditAccountId;
        }
        if t.ledger != 0 && t.ledger != p.ledger {
            return R::PendingTransferHasDifferentLedger;
        }
        if t.code != 0 && t.code != p.code {
            return R::PendingTransferHasDifferentCode;
        }
        let amount = if post {
            if t.amount > p.amount {
                return R::ExceedsPendingTransferAmount;
            }
            if t.amount == 0 { p.amount } else { t.amount }
        } else {
            if t.amount != 0 && t.amount != p.amount {
                return R::PendingTransferHasDifferentAmount;
            }
            p.amount
        };
        match hold.status {
            HoldStatus::Pending => {}
            HoldStatus::Posted => return R::PendingTransferAlreadyPosted,
            HoldStatus::Voided => return R::PendingTransferAlreadyVoided,
            HoldStatus::Expired => return R::PendingTransferExpired,
        }
        if hold.expires_at != 0 && hold.expires_at <= timestamp {
            return R::PendingTransferExpired;
        }
        let dr = self.accounts[&p.debit_account_id];
        let cr = self.accounts[&p.credit_account_id];
        let mut dr2 = dr;
        let mut cr2 = cr;
        dr2.debits_pending -= p.amount;
        cr2.credits_pending -= p.amount;
        if post {
            let Some(v) = dr2.debits_posted.checked_add(amount) else {
                return R::OverflowsDebitsPosted;
            };
            dr2.debits_posted = v;
            let Some(v) = cr2.credits_posted.checked_add(amount) else {
                return R::OverflowsCreditsPosted;
            };
            cr2.credits_posted = v;
        }
        // Limits: a post moves at most what the hold reserved from pending to posted, so
        // `debits_pending + debits_posted` does not grow and needs no check (as in
        // TigerBeetle).
        let stored = Transfer {
            debit_account_id: p.debit_account_id,
            credit_account_id: p.credit_account_id,
            ledger: p.ledger,
            code: p.code,
            amount,
            timestamp,
            ..*t
        };
        self.set_account(dr2, dr, undo);
        self.set_account(cr2, cr, undo);
        self.insert_transfer(stored, undo);
        undo.push(Undo::Hold(p.id, hold));
        if hold.expires_at != 0 {
            self.expiries.remove(&(hold.expires_at, p.id));
        }
        self.holds.insert(
            p.id,
            HoldState {
                status: if post {
                    HoldStatus::Posted
                } else {
                    HoldStatus::Voided
                },
                expires_at: hold.expires_at,
                resolved_by: t.id,
                resolved_at: timestamp,
            },
        );
        self.record_history(&dr2, timestamp, undo);
        self.record_history(&cr2, timestamp, undo);
        R::Ok
    }

    fn set_account(&mut self, new: Account, old: Account, undo: &mut Vec<Undo>) {
        undo.push(Undo::Account(old));
        self.accounts.insert(new.id, new);
    }

    fn insert_transfer(&mut self, t: Transfer, undo: &mut Vec<Undo>) {
        self.by_account
            .insert((t.debit_account_id, t.timestamp, t.id));
        self.by_account
            .insert((t.credit_account_id, t.timestamp, t.id));
        self.transfers.insert(t.id, t);
        undo.push(Undo::TransferCreated(t));
    }

    fn record_history(&mut self, a: &Account, timestamp: u64, undo: &mut Vec<Undo>) {
        if a.flags.contains(AccountFlags::HISTORY) {
            self.history.insert(
                (a.id, timestamp),
                AccountBalance {
                    timestamp,
                    debits_pending: a.debits_pending,
                    debits_posted: a.debits_posted,
                    credits_pending: a.credits_pending,
                    credits_posted: a.credits_posted,
                },
            );
            undo.push(Undo::History(a.id, timestamp));
        }
    }

    fn rollback(&mut self, undo: &mut Vec<Undo>) {
        while let Some(u) = undo.pop() {
            match u {
                Undo::AccountCreated(id) => {
                    self.accounts.remove(&id);
                }
                Undo::Account(a) => {
                    self.accounts.insert(a.id, a);
                }
                Undo::TransferCreated(t) => {
                    self.transfers.remove(&t.id);
                    self.by_account
                        .remove(&(t.debit_account_id, t.timestamp, t.id));
                    self.by_account
                        .remove(&(t.credit_account_id, t.timestamp, t.id));
                }
                Undo::HoldCreated(id) => {
                    if let Some(h) = self.holds.remove(&id) {
                        self.expiries.remove(&(h.expires_at, id));
                    }
                }
                Undo::Hold(id, prev) => {
                    if prev.status == HoldStatus::Pending && prev.expires_at != 0 {
                        self.expiries.insert((prev.expires_at, id));
                    }
                    self.holds.insert(id, prev);
                }
                Undo::History(id, ts) => {
                    self.history.remove(&(id, ts));
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Reads
    // ---------------------------------------------------------------------------------

    /// The accounts of `ids` that exist, in the order asked (unknown ids are left out, as in
    /// TigerBeetle).
    pub fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        ids.iter()
            .filter_map(|id| self.accounts.get(id).copied())
            .collect()
    }

    /// The transfers of `ids` that exist, in the order asked (unknown ids are left out).
    pub fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        ids.iter()
            .filter_map(|id| self.transfers.get(id).copied())
            .collect()
    }

    /// One page of an account's transfers (as debit or credit account), in timestamp order,
    /// those with a timestamp strictly after `after_timestamp` (0: from the start), at most
    /// `limit`. The next page starts after the last one's timestamp. Empty for an unknown
    /// account.
    pub fn account_transfers(
        &self,
        account_id: u128,
        after_timestamp: u64,
        limit: usize,
    ) -> Vec<Transfer> {
        if after_timestamp == u64::MAX {
            return Vec::new();
        }
        self.by_account
            .range((account_id, after_timestamp + 1, 0)..=(account_id, u64::MAX, u128::MAX))
            .take(limit)
            .map(|&(_, _, id)| self.transfers[&id])
            .collect()
    }

    /// One page of a history account's balances, in timestamp order, strictly after
    /// `after_timestamp`, at most `limit`. Empty for accounts without
    /// [`AccountFlags::HISTORY`].
    pub fn account_balances(
        &self,
        account_id: u128,
        after_timestamp: u64,
        limit: usize,
    ) -> Vec<AccountBalance> {
        if after_timestamp == u64::MAX {
            return Vec::new();
        }
        self.history
            .range((account_id, after_timestamp + 1)..=(account_id, u64::MAX))
            .take(limit)
            .map(|(_, b)| *b)
            .collect()
    }

    /// Accounts with ids in `from..=to`, in id order, at most `limit` (the bulk read of seed
    /// 001; page on with `from = last id + 1`). Empty when `from > to`.
    pub fn accounts_in_range(&self, from: u128, to: u128, limit: usize) -> Vec<Account> {
        if from > to {
            return Vec::new();
        }
        self.accounts
            .range(from..=to)
            .take(limit)
            .map(|(_, a)| *a)
            .collect()
    }

    /// Holds in id order with an id strictly above `after_id`, those in `status` only when
    /// given, at most `limit`.
    pub fn pending(&self, status: Option<HoldStatus>, after_id: u128, limit: usize) -> Vec<Hold> {
        if after_id == u128::MAX {
            return Vec::new();
        }
        self.holds
            .range(after_id + 1..)
            .filter(|(_, h)| status.is_none_or(|s| s == h.status))
            .take(limit)
            .map(|(id, h)| self.make_hold(*id, h))
            .collect()
    }

    /// The state of one hold, `None` when `id` is not a hold.
    pub fn hold(&self, id: u128) -> Option<Hold> {
        self.holds.get(&id).map(|h| self.make_hold(id, h))
    }

    fn make_hold(&self, id: u128, h: &HoldState) -> Hold {
        Hold {
            transfer: self.transfers[&id],
            status: h.status,
            expires_at: h.expires_at,
            resolved_by: h.resolved_by,
            resolved_at: h.resolved_at,
        }
    }

    /// Sums over all accounts: `(debits_pending, debits_posted, credits_pending,
    /// credits_posted)`, wrapping (so that a check of `debits == credits` still means
    /// something when the totals pass `u128::MAX`). Double entry makes debits equal credits
    /// at every instant.
    pub fn totals(&self) -> (u128, u128, u128, u128) {
        self.accounts
            .values()
            .fold((0u128, 0u128, 0u128, 0u128), |(a, b, c, d), x| {
                (
                    a.wrapping_add(x.debits_pending),
                    b.wrapping_add(x.debits_posted),
                    c.wrapping_add(x.credits_pending),
                    d.wrapping_add(x.credits_posted),
                )
            })
    }
}

/// The result of a transfer whose id exists: `exists` when every field submitted matches
/// the stored one, else the first field that differs. For a post or void, fields left at 0
/// (taken from the hold) match whatever was stored.
fn transfer_exists(t: &Transfer, e: &Transfer) -> CreateTransferResult {
    use CreateTransferResult as R;
    let resolving = t.flags.contains(TransferFlags::POST_PENDING_TRANSFER)
        || t.flags.contains(TransferFlags::VOID_PENDING_TRANSFER);
    let same = |given: u128, stored: u128| given == stored || (resolving && given == 0);
    if t.flags != e.flags {
        R::ExistsWithDifferentFlags
    } else if t.pending_id != e.pending_id {
        R::ExistsWithDifferentPendingId
    } else if t.timeout_ms != e.timeout_ms {
        R::ExistsWithDifferentTimeout
    } else if !same(t.debit_account_id, e.debit_account_id) {
        R::ExistsWithDifferentDebitAccountId
    } else if !same(t.credit_account_id, e.credit_account_id) {
        R::ExistsWithDifferentCreditAccountId
    } else if !same(t.amount, e.amount) {
        R::ExistsWithDifferentAmount
    } else if t.user_data != e.user_data {
        R::ExistsWithDifferentUserData
    } else if !same(t.ledger.into(), e.ledger.into()) {
        R::ExistsWithDifferentLedger
    } else if !same(t.code.into(), e.code.into()) {
        R::ExistsWithDifferentCode
    } else {
        R::Exists
    }
}
