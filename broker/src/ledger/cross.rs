//! The transaction table of cross-shard transfers (two-phase commit, `docs/ledger.md`).
//!
//! A cross-shard transfer `T` (debit account on shard A, credit account on shard B) is
//! recorded in the table of its **coordinator shard** (A, the debit account's shard) by
//! [`LedgerState::begin_cross`]; its two legs are holds on A (`x → clearing`) and B
//! (`clearing → y`), created by ordinary `CreateTransfers` batches. The decision
//! ([`LedgerState::decide_cross`]) is written once: the first one wins and every later one
//! reads it. [`LedgerState::complete_cross`] marks the record done once both legs are
//! posted (commit) or voided (abort). Everything is deterministic: the only time is the
//! leader-stamped time of the entry.
//!
//! The prepare deadline is advisory for the state machine: it does not refuse a commit after
//! it (keeping the rule "first decision wins" the only rule). It tells the recovery task
//! when an undecided transaction may be aborted: once `abort` is recorded, a late commit of
//! the coordinator reads `abort` and voids its legs.

use super::state::LedgerState;
use super::types::CreateTransferResult;

/// One leg of a cross-shard transfer: a hold on `shard`, resolved by `resolve_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrossLeg {
    /// Index of the shard (`ledger-<shard>`) that holds the leg.
    pub shard: u32,
    /// Id of the hold (the pending transfer).
    pub hold_id: u128,
    /// Id of the post or void that resolves the hold.
    pub resolve_id: u128,
    /// Debit account of the hold (the customer's account, or the clearing account).
    pub debit_account_id: u128,
    /// Credit account of the hold.
    pub credit_account_id: u128,
}

/// A cross-shard transfer as the coordinator begins it: the original transfer's fields and
/// its two legs (`legs[0]` the debit leg, `legs[1]` the credit leg).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrossTransfer {
    /// The original transfer's id (the idempotency key of the whole transaction).
    pub id: u128,
    /// The account debited (on the coordinator shard).
    pub debit_account_id: u128,
    /// The account credited (on another shard).
    pub credit_account_id: u128,
    /// Minor units.
    pub amount: u128,
    /// The original transfer's user data.
    pub user_data: u128,
    /// Ledger (currency) of both accounts and both legs.
    pub ledger: u32,
    /// Code of the transfer and of both legs.
    pub code: u16,
    /// The debit leg then the credit leg.
    pub legs: [CrossLeg; 2],
    /// Nanoseconds since the Unix epoch after which an undecided transaction may be aborted
    /// by recovery.
    pub prepare_deadline_ns: u64,
}

/// The decision of a cross-shard transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Both legs were held: post both.
    Commit,
    /// Void both legs; `reason` is the result of the failing leg (or
    /// `pending_transfer_expired` when recovery aborted at the prepare deadline), which a
    /// retry of the transfer answers.
    Abort {
        /// Why.
        reason: CreateTransferResult,
    },
}

/// A row of the transaction table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossRecord {
    /// What was begun.
    pub transfer: CrossTransfer,
    /// Nanoseconds since the Unix epoch, when begun.
    pub begun_at: u64,
    /// `None` until decided; never changes once set.
    pub decision: Option<Decision>,
    /// When decided (0: not yet), ns.
    pub decided_at: u64,
    /// When both legs were resolved and the coordinator or recovery said so (0: not yet),
    /// ns.
    pub completed_at: u64,
}

super::types::result_enum! {
    /// The result of [`LedgerState::decide_cross`] and [`LedgerState::complete_cross`]; the
    /// reply carries the record as it is after the command.
    CrossResult {
        /// Decided, or completed, now.
        Ok = 0 => "ok",
        /// The same decision was recorded already, or the record was completed already:
        /// nothing changed.
        Exists = 1 => "exists",
        /// The other decision was recorded first; it stands (see the record).
        AlreadyDecided = 2 => "already_decided",
        /// No transaction has this id on this shard.
        NotFound = 3 => "not_found",
        /// Complete before any decision.
        NotDecided = 4 => "not_decided",
    }
}

impl LedgerState {
    /// Begins cross-shard transfer `t` at `now_ns` (the leader-stamped time, ns): records it
    /// undecided. Idempotent: a record with the same id answers `exists` when the
    /// transfer's own fields (accounts, amount, user data, ledger, code) match, else the
    /// first `exists_with_different_<field>`; the legs and deadline of a retry are not
    /// compared (the first ones stand). Input checks as for a plain transfer (ids, amount,
    /// ledger, code, different accounts). Returns the result and the record as it is now.
    pub fn begin_cross(
        &mut self,
        t: &CrossTransfer,
        now_ns: u64,
    ) -> (CreateTransferResult, Option<CrossRecord>) {
        use CreateTransferResult as R;
        let timestamp = self.reserve_one(now_ns);
        if t.id == 0 {
            return (R::IdMustNotBeZero, None);
        }
        if t.id == u128::MAX {
            return (R::IdMustNotBeIntMax, None);
        }
        if let Some(e) = self.cross.get(&t.id) {
            let f = &e.transfer;
            let r = if t.debit_account_id != f.debit_account_id {
                R::ExistsWithDifferentDebitAccountId
            } else if t.credit_account_id != f.credit_account_id {
                R::ExistsWithDifferentCreditAccountId
            } else if t.amount != f.amount {
                R::ExistsWithDifferentAmount
            } else if t.user_data != f.user_data {
                R::ExistsWithDifferentUserData
            } else if t.ledger != f.ledger {
                R::ExistsWithDifferentLedger
            } else if t.code != f.code {
                R::ExistsWithDifferentCode
            } else {
                R::Exists
            };
            return (r, Some(*e));
        }
        let r = if t.debit_account_id == 0 {
            R::DebitAccountIdMustNotBeZero
        } else if t.debit_account_id == u128::MAX {
            R::DebitAccountIdMustNotBeIntMax
        } else if t.credit_account_id == 0 {
            R::CreditAccountIdMustNotBeZero
        } else if t.credit_account_id == u128::MAX {
            R::CreditAccountIdMustNotBeIntMax
        } else if t.debit_account_id == t.credit_account_id {
            R::AccountsMustBeDifferent
        } else if t.amount == 0 {
            R::AmountMustNotBeZero
        } else if t.ledger == 0 {
            R::LedgerMustNotBeZero
        } else if t.code == 0 {
            R::CodeMustNotBeZero
        } else {
            R::Ok
        };
        if r != R::Ok {
            return (r, None);
        }
        let rec = CrossRecord {
            transfer: *t,
            begun_at: timestamp,
            decision: None,
            decided_at: 0,
            completed_at: 0,
        };
        self.cross.insert(t.id, rec);
        self.open_cross.insert(t.id);
        (R::Ok, Some(rec))
    }

    /// Records `decision` for transaction `id` at `now_ns` (ns), write-once: the first
    /// decision wins; the same decision again answers `exists`, the other one
    /// `already_decided`, and both return the recorded one in the record. A decision is taken
    /// whatever the time (even past the prepare deadline): only the order of decisions in
    /// the log counts.
    pub fn decide_cross(
        &mut self,
        id: u128,
        decision: Decision,
        now_ns: u64,
    ) -> (CrossResult, Option<CrossRecord>) {
        let timestamp = self.reserve_one(now_ns);
        let Some(rec) = self.cross.get_mut(&id) else {
            return (CrossResult::NotFound, None);
        };
        let r = match rec.decision {
            None => {
                rec.decision = Some(decision);
                rec.decided_at = timestamp;
                CrossResult::Ok
            }
            Some(d) if same_decision(d, decision) => CrossResult::Exists,
            Some(_) => CrossResult::AlreadyDecided,
        };
        (r, Some(*rec))
    }

    /// Marks transaction `id` complete at `now_ns` (ns): both legs posted or voided as
    /// decided. `not_decided` before a decision, `exists` when complete already.
    pub fn complete_cross(&mut self, id: u128, now_ns: u64) -> (CrossResult, Option<CrossRecord>) {
        let timestamp = self.reserve_one(now_ns);
        let Some(rec) = self.cross.get_mut(&id) else {
            return (CrossResult::NotFound, None);
        };
        let r = if rec.decision.is_none() {
            CrossResult::NotDecided
        } else if rec.completed_at != 0 {
            CrossResult::Exists
        } else {
            rec.completed_at = timestamp;
            self.open_cross.remove(&id);
            CrossResult::Ok
        };
        (r, Some(*rec))
    }

    /// The record of transaction `id`, if this shard coordinates it.
    pub fn cross(&self, id: u128) -> Option<CrossRecord> {
        self.cross.get(&id).copied()
    }

    /// Incomplete transactions (undecided, or decided and not yet completed) with an id
    /// above `after_id`, in id order, at most `limit`: the recovery task's work list.
    pub fn open_cross(&self, after_id: u128, limit: usize) -> Vec<CrossRecord> {
        if after_id == u128::MAX {
            return Vec::new();
        }
        self.open_cross
            .range(after_id + 1..)
            .take(limit)
            .map(|id| self.cross[id])
            .collect()
    }

    /// Number of transactions in the table.
    pub fn cross_count(&self) -> usize {
        self.cross.len()
    }

    /// Number of incomplete transactions.
    pub fn open_cross_count(&self) -> usize {
        self.open_cross.len()
    }
}

/// Whether two decisions are the same (aborts are the same whatever their reasons).
fn same_decision(a: Decision, b: Decision) -> bool {
    matches!(
        (a, b),
        (Decision::Commit, Decision::Commit) | (Decision::Abort { .. }, Decision::Abort { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::super::{LedgerCommand, LedgerReply};
    use super::*;
    use CreateTransferResult as R;

    const T0: u64 = 1_700_000_000_000_000_000;

    fn cross(id: u128) -> CrossTransfer {
        CrossTransfer {
            id,
            debit_account_id: 1,
            credit_account_id: 1001,
            amount: 500,
            user_data: 7,
            ledger: 1,
            code: 1,
            legs: [
                CrossLeg {
                    shard: 0,
                    hold_id: 11,
                    resolve_id: 12,
                    debit_account_id: 1,
                    credit_account_id: 99,
                },
                CrossLeg {
                    shard: 1,
                    hold_id: 13,
                    resolve_id: 14,
                    debit_account_id: 99,
                    credit_account_id: 1001,
                },
            ],
            prepare_deadline_ns: T0 + 5_000_000_000,
        }
    }

    const ABORT: Decision = Decision::Abort {
        reason: R::ExceedsCredits,
    };

    #[test]
    fn begin_checks_its_input_and_is_idempotent_per_field() {
        let cases: Vec<(&str, CrossTransfer, R)> = vec![
            ("ok", cross(5), R::Ok),
            ("id 0", cross(0), R::IdMustNotBeZero),
            ("id max", cross(u128::MAX), R::IdMustNotBeIntMax),
            (
                "debit 0",
                CrossTransfer {
                    debit_account_id: 0,
                    ..cross(5)
                },
                R::DebitAccountIdMustNotBeZero,
            ),
            (
                "debit max",
                CrossTransfer {
                    debit_account_id: u128::MAX,
                    ..cross(5)
                },
                R::DebitAccountIdMustNotBeIntMax,
            ),
            (
                "credit 0",
                CrossTransfer {
                    credit_account_id: 0,
                    ..cross(5)
                },
                R::CreditAccountIdMustNotBeZero,
            ),
            (
                "credit max",
                CrossTransfer {
                    credit_account_id: u128::MAX,
                    ..cross(5)
                },
                R::CreditAccountIdMustNotBeIntMax,
            ),
            (
                "same accounts",
                CrossTransfer {
                    credit_account_id: 1,
                    ..cross(5)
                },
                R::AccountsMustBeDifferent,
            ),
            (
                "amount 0",
                CrossTransfer {
                    amount: 0,
                    ..cross(5)
                },
                R::AmountMustNotBeZero,
            ),
            (
                "ledger 0",
                CrossTransfer {
                    ledger: 0,
                    ..cross(5)
                },
                R::LedgerMustNotBeZero,
            ),
            (
                "code 0",
                CrossTransfer {
                    code: 0,
                    ..cross(5)
                },
                R::CodeMustNotBeZero,
            ),
        ];
        for (name, t, want) in cases {
            let mut s = LedgerState::new();
            let (r, rec) = s.begin_cross(&t, T0);
            assert_eq!(r, want, "{name}");
            assert_eq!(rec.is_some(), want == R::Ok, "{name}");
            assert_eq!(s.cross_count(), usize::from(want == R::Ok), "{name}");
        }

        let mut s = LedgerState::new();
        let (r, first) = s.begin_cross(&cross(5), T0);
        assert_eq!(r, R::Ok);
        let first = first.unwrap();
        assert_eq!(first.begun_at, T0);
        assert_eq!(first.decision, None);
        let retries: Vec<(&str, CrossTransfer, R)> = vec![
            (
                "same (a later deadline is not compared)",
                CrossTransfer {
                    prepare_deadline_ns: T0 + 9,
                    ..cross(5)
                },
                R::Exists,
            ),
            (
                "debit",
                CrossTransfer {
                    debit_account_id: 2,
                    ..cross(5)
                },
                R::ExistsWithDifferentDebitAccountId,
            ),
            (
                "credit",
                CrossTransfer {
                    credit_account_id: 2,
                    ..cross(5)
                },
                R::ExistsWithDifferentCreditAccountId,
            ),
            (
                "amount",
                CrossTransfer {
                    amount: 1,
                    ..cross(5)
                },
                R::ExistsWithDifferentAmount,
            ),
            (
                "user data",
                CrossTransfer {
                    user_data: 1,
                    ..cross(5)
                },
                R::ExistsWithDifferentUserData,
            ),
            (
                "ledger",
                CrossTransfer {
                    ledger: 2,
                    ..cross(5)
                },
                R::ExistsWithDifferentLedger,
            ),
            (
                "code",
                CrossTransfer {
                    code: 2,
                    ..cross(5)
                },
                R::ExistsWithDifferentCode,
            ),
        ];
        for (name, t, want) in retries {
            let (r, rec) = s.begin_cross(&t, T0 + 1);
            assert_eq!(r, want, "{name}");
            assert_eq!(rec, Some(first), "{name}: the first record stands");
        }
        assert_eq!(s.cross_count(), 1);
        assert_eq!(s.open_cross_count(), 1);
    }

    #[test]
    fn the_first_decision_wins_and_later_ones_read_it() {
        // (first decision, second decision, result of the second, recorded decision)
        let cases = [
            (
                Decision::Commit,
                Decision::Commit,
                CrossResult::Exists,
                Decision::Commit,
            ),
            (
                Decision::Commit,
                ABORT,
                CrossResult::AlreadyDecided,
                Decision::Commit,
            ),
            (ABORT, Decision::Commit, CrossResult::AlreadyDecided, ABORT),
            (
                ABORT,
                Decision::Abort {
                    reason: R::PendingTransferExpired,
                },
                CrossResult::Exists,
                ABORT,
            ),
        ];
        for (first, second, want, recorded) in cases {
            let mut s = LedgerState::new();
            s.begin_cross(&cross(5), T0);
            let (r, rec) = s.decide_cross(5, first, T0 + 10);
            assert_eq!(r, CrossResult::Ok);
            assert_eq!(rec.unwrap().decided_at, T0 + 10);
            let (r, rec) = s.decide_cross(5, second, T0 + 20);
            assert_eq!(r, want, "{first:?} then {second:?}");
            let rec = rec.unwrap();
            assert_eq!(rec.decision, Some(recorded));
            assert_eq!(rec.decided_at, T0 + 10, "the first decision's time stands");
        }
        let mut s = LedgerState::new();
        assert_eq!(
            s.decide_cross(5, Decision::Commit, T0),
            (CrossResult::NotFound, None)
        );
    }

    #[test]
    fn a_commit_after_the_prepare_deadline_still_wins_when_no_abort_was_recorded() {
        let mut s = LedgerState::new();
        s.begin_cross(&cross(5), T0);
        let late = cross(5).prepare_deadline_ns + 1;
        let (r, rec) = s.decide_cross(5, Decision::Commit, late);
        assert_eq!(r, CrossResult::Ok);
        assert_eq!(rec.unwrap().decision, Some(Decision::Commit));
    }

    #[test]
    fn complete_needs_a_decision_and_is_idempotent() {
        let mut s = LedgerState::new();
        assert_eq!(s.complete_cross(5, T0).0, CrossResult::NotFound);
        s.begin_cross(&cross(5), T0);
        s.begin_cross(&cross(6), T0);
        assert_eq!(s.complete_cross(5, T0).0, CrossResult::NotDecided);
        assert_eq!(s.open_cross(0, 10).len(), 2);
        s.decide_cross(5, Decision::Commit, T0);
        let (r, rec) = s.complete_cross(5, T0);
        assert_eq!(r, CrossResult::Ok);
        let done = rec.unwrap().completed_at;
        assert!(done > 0);
        let (r, rec) = s.complete_cross(5, T0 + 100);
        assert_eq!(r, CrossResult::Exists);
        assert_eq!(rec.unwrap().completed_at, done);
        let open: Vec<u128> = s.open_cross(0, 10).iter().map(|r| r.transfer.id).collect();
        assert_eq!(open, vec![6]);
        assert!(s.open_cross(6, 10).is_empty());
        assert_eq!(s.cross(5).unwrap().decision, Some(Decision::Commit));
    }

    #[test]
    fn cross_commands_take_strictly_increasing_timestamps_from_the_entry() {
        let mut s = LedgerState::new();
        s.begin_cross(&cross(5), T0);
        // The leader's clock went back: the state machine still moves forward.
        let (_, rec) = s.decide_cross(5, ABORT, T0 - 50);
        assert_eq!(rec.unwrap().decided_at, T0 + 1);
        let (_, rec) = s.complete_cross(5, T0 - 60);
        assert_eq!(rec.unwrap().completed_at, T0 + 2);
        assert_eq!(s.last_timestamp(), T0 + 2);
    }

    #[test]
    fn cross_commands_round_trip_and_apply() {
        let cmds = [
            LedgerCommand::BeginCross(Box::new(cross(5))),
            LedgerCommand::DecideCross {
                id: 5,
                decision: ABORT,
            },
            LedgerCommand::DecideCross {
                id: 5,
                decision: Decision::Commit,
            },
            LedgerCommand::CompleteCross { id: 5 },
        ];
        let mut s = LedgerState::new();
        let mut replies = Vec::new();
        for c in &cmds {
            let bytes = c.encode();
            assert_eq!(bytes.len(), c.encoded_len());
            assert_eq!(&LedgerCommand::decode(&bytes).unwrap(), c);
            for cut in 0..bytes.len() {
                assert!(LedgerCommand::decode(&bytes[..cut]).is_err());
            }
            replies.push(s.apply(c, T0));
        }
        let rec = s.cross(5).unwrap();
        assert_eq!(
            replies[0],
            LedgerReply::Begun(
                R::Ok,
                Some(Box::new(CrossRecord {
                    decision: None,
                    decided_at: 0,
                    completed_at: 0,
                    ..rec
                }))
            )
        );
        assert!(matches!(
            replies[1],
            LedgerReply::Cross(CrossResult::Ok, Some(_))
        ));
        assert!(matches!(
            replies[2],
            LedgerReply::Cross(CrossResult::AlreadyDecided, Some(_))
        ));
        assert!(matches!(
            replies[3],
            LedgerReply::Cross(CrossResult::Ok, Some(_))
        ));
        // An abort with a code that is not a transfer result is a decode error.
        let mut bad = cmds[1].encode();
        let last = bad.len() - 1;
        bad[last] = 200;
        assert!(LedgerCommand::decode(&bad).is_err());
    }

    #[test]
    fn a_clearing_account_is_created_by_the_first_leg_that_names_it_and_only_then() {
        use super::super::{Account, AccountFlags, Transfer, TransferFlags};
        use txpipe_client::ledger::{CLEARING_ACCOUNT_CODE, clearing_account, fence_account};
        let mut s = LedgerState::new();
        let limited = Account {
            id: 1,
            ledger: 1,
            code: 1,
            flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            ..Account::default()
        };
        let funder = Account { id: 2, ..limited };
        let funder = Account {
            flags: AccountFlags::default(),
            ..funder
        };
        s.create_accounts(&[limited, funder], T0);
        let fund = Transfer {
            id: 100,
            debit_account_id: 2,
            credit_account_id: 1,
            amount: 1000,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        let clearing = clearing_account(1);
        let leg = |id: u128, amount: u128, ledger: u32| Transfer {
            id,
            debit_account_id: 1,
            credit_account_id: clearing_account(ledger),
            amount,
            ledger,
            code: 1,
            flags: TransferFlags::PENDING,
            ..Transfer::default()
        };
        // (name, transfer, result, clearing account exists afterwards)
        let cases = [
            (
                "over the limit",
                leg(101, 5000, 1),
                R::ExceedsCredits,
                false,
            ),
            (
                "clearing account of ledger 0",
                leg(102, 5, 0),
                R::LedgerMustNotBeZero,
                false,
            ),
            (
                "another ledger's clearing account",
                Transfer {
                    ledger: 1,
                    ..leg(103, 5, 2)
                },
                R::AccountsMustHaveTheSameLedger,
                false,
            ),
            ("a leg", leg(104, 500, 1), R::Ok, true),
            (
                "a fence: clearing to fence account, both created on use",
                Transfer {
                    debit_account_id: clearing,
                    credit_account_id: fence_account(1),
                    ..leg(105, 9, 1)
                },
                R::Ok,
                true,
            ),
        ];
        s.create_transfers(&[fund], T0 + 1);
        for (name, t, want, exists) in cases {
            let r = s.create_transfers(&[t], T0 + 2);
            assert_eq!(r, vec![(0, want)], "{name}");
            assert_eq!(
                s.lookup_accounts(&[clearing]).len(),
                usize::from(exists),
                "{name}"
            );
            assert!(
                s.lookup_accounts(&[clearing_account(2)]).is_empty(),
                "{name}"
            );
        }
        let c = s.lookup_accounts(&[clearing])[0];
        assert_eq!(c.code, CLEARING_ACCOUNT_CODE);
        assert_eq!((c.debits_pending, c.credits_pending), (9, 500));
        assert_eq!(s.lookup_accounts(&[fence_account(1)])[0].credits_pending, 9);
        s.check_consistency().unwrap();
        assert_eq!(LedgerState::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn the_table_is_in_snapshots_and_the_hash_and_old_snapshots_still_decode() {
        let mut s = LedgerState::new();
        let empty_v1 = s.encode();
        assert_eq!(
            empty_v1[4], 1,
            "a state without cross transfers is written as version 1"
        );
        assert_eq!(LedgerState::decode(&empty_v1).unwrap(), s);
        let h0 = s.state_hash();
        s.begin_cross(&cross(5), T0);
        s.begin_cross(&cross(6), T0);
        s.begin_cross(&cross(7), T0);
        s.decide_cross(6, Decision::Commit, T0);
        s.decide_cross(7, ABORT, T0);
        s.complete_cross(7, T0);
        let h1 = s.state_hash();
        assert_ne!(h0, h1);
        let bytes = s.encode();
        assert_eq!(bytes[4], 2);
        let back = LedgerState::decode(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.state_hash(), h1);
        assert_eq!(back.open_cross_count(), 2);
        for cut in 0..bytes.len() {
            assert!(LedgerState::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = s.clone();
        other.decide_cross(5, ABORT, T0);
        assert_ne!(other.state_hash(), h1, "a decision changes the hash");
    }
}
