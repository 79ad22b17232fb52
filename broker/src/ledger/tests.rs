//! Table-driven unit tests of the ledger state machine: every result code, every bad input
//! of issue 15, holds, expiry, linked chains, reads and the encodings.

use super::*;
use CreateAccountResult as A;
use CreateTransferResult as R;

/// A batch time: 2023-11-14 in nanoseconds.
const T0: u64 = 1_700_000_000_000_000_000;
/// One second in nanoseconds.
const SEC: u64 = 1_000_000_000;

fn account(id: u128, ledger: u32, flags: AccountFlags) -> Account {
    Account {
        id,
        ledger,
        code: 1,
        flags,
        ..Account::default()
    }
}

fn transfer(id: u128, dr: u128, cr: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: dr,
        credit_account_id: cr,
        amount,
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }
}

fn hold(id: u128, dr: u128, cr: u128, amount: u128, timeout_ms: u64) -> Transfer {
    Transfer {
        flags: TransferFlags::PENDING,
        timeout_ms,
        ..transfer(id, dr, cr, amount)
    }
}

fn post(id: u128, pending_id: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        pending_id,
        amount,
        flags: TransferFlags::POST_PENDING_TRANSFER,
        ..Transfer::default()
    }
}

fn void(id: u128, pending_id: u128) -> Transfer {
    Transfer {
        flags: TransferFlags::VOID_PENDING_TRANSFER,
        ..post(id, pending_id, 0)
    }
}

fn linked(t: Transfer) -> Transfer {
    Transfer {
        flags: t.flags | TransferFlags::LINKED,
        ..t
    }
}

fn results<T>(r: Vec<(u32, T)>) -> Vec<T> {
    r.into_iter()
        .enumerate()
        .map(|(i, (k, v))| {
            assert_eq!(i as u32, k, "results are in batch order");
            v
        })
        .collect()
}

fn balances(s: &LedgerState, id: u128) -> [u128; 4] {
    let a = s.lookup_accounts(&[id])[0];
    [
        a.debits_pending,
        a.debits_posted,
        a.credits_pending,
        a.credits_posted,
    ]
}

/// Accounts 1, 2, 6 (ledger 1, no limits), 3 (ledger 2), 4 (debits must not exceed
/// credits), 5 (credits must not exceed debits), 7 (history); transfer 100 (1 → 2, 10);
/// holds 200 (pending, 50, 1 s timeout), 201 (posted by 301), 202 (voided by 302), 203
/// (expired), 204 (pending, no timeout), all 1 → 2.
fn base() -> LedgerState {
    let mut s = LedgerState::new();
    let accounts = [
        account(1, 1, AccountFlags::default()),
        account(2, 1, AccountFlags::default()),
        account(3, 2, AccountFlags::default()),
        account(4, 1, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(5, 1, AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS),
        account(6, 1, AccountFlags::default()),
        account(7, 1, AccountFlags::HISTORY),
    ];
    assert!(
        results(s.create_accounts(&accounts, T0))
            .iter()
            .all(|r| *r == A::Ok)
    );
    let batch = [
        transfer(100, 1, 2, 10),
        hold(200, 1, 2, 50, 1000),
        hold(201, 1, 2, 20, 0),
        hold(202, 1, 2, 30, 0),
        hold(203, 1, 2, 40, 1),
        hold(204, 1, 2, 5, 0),
        post(301, 201, 0),
        void(302, 202),
    ];
    assert!(
        results(s.create_transfers(&batch, T0 + SEC / 1000 - 10))
            .iter()
            .all(|r| *r == R::Ok)
    );
    // 2 ms after: hold 203 (1 ms) expires, 200 (1 s) does not.
    assert_eq!(s.expire_pending(T0 + 2 * SEC / 1000), vec![203]);
    s
}

/// One account per account result code (but the chain codes), against [`base`].
fn account_cases() -> Vec<(&'static str, Account, A)> {
    let ok = account(10, 1, AccountFlags::default());
    vec![
        ("valid", ok, A::Ok),
        (
            "timestamp set",
            Account { timestamp: 1, ..ok },
            A::TimestampMustBeZero,
        ),
        (
            "unknown flag",
            Account {
                flags: AccountFlags(1 << 9),
                ..ok
            },
            A::ReservedFlag,
        ),
        ("id 0", Account { id: 0, ..ok }, A::IdMustNotBeZero),
        (
            "id max",
            Account {
                id: u128::MAX,
                ..ok
            },
            A::IdMustNotBeIntMax,
        ),
        (
            "both limits",
            Account {
                flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
                    | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
                ..ok
            },
            A::FlagsAreMutuallyExclusive,
        ),
        (
            "debits pending",
            Account {
                debits_pending: 1,
                ..ok
            },
            A::DebitsPendingMustBeZero,
        ),
        (
            "debits posted",
            Account {
                debits_posted: 1,
                ..ok
            },
            A::DebitsPostedMustBeZero,
        ),
        (
            "credits pending",
            Account {
                credits_pending: 1,
                ..ok
            },
            A::CreditsPendingMustBeZero,
        ),
        (
            "credits posted",
            Account {
                credits_posted: 1,
                ..ok
            },
            A::CreditsPostedMustBeZero,
        ),
        (
            "ledger 0",
            Account { ledger: 0, ..ok },
            A::LedgerMustNotBeZero,
        ),
        ("code 0", Account { code: 0, ..ok }, A::CodeMustNotBeZero),
        (
            "same as 1",
            account(1, 1, AccountFlags::default()),
            A::Exists,
        ),
        (
            "1 other flags",
            account(1, 1, AccountFlags::HISTORY),
            A::ExistsWithDifferentFlags,
        ),
        (
            "1 other user data",
            Account {
                user_data: 9,
                ..account(1, 1, AccountFlags::default())
            },
            A::ExistsWithDifferentUserData,
        ),
        (
            "1 other ledger",
            account(1, 2, AccountFlags::default()),
            A::ExistsWithDifferentLedger,
        ),
        (
            "1 other code",
            Account {
                code: 2,
                ..account(1, 1, AccountFlags::default())
            },
            A::ExistsWithDifferentCode,
        ),
    ]
}

#[test]
fn every_bad_account_gets_its_own_code_and_nothing_is_created() {
    let cases = account_cases();
    let start = base();
    for (name, a, want) in cases {
        let mut s = start.clone();
        let got = results(s.create_accounts(&[a], T0 + 10 * SEC));
        assert_eq!(got, vec![want], "{name}");
        if want == A::Ok {
            assert_eq!(s.lookup_accounts(&[a.id])[0].timestamp, s.last_timestamp());
        } else {
            let mut u = start.clone();
            u.last_timestamp = s.last_timestamp();
            assert_eq!(s, u, "{name}: nothing but the clock changed");
        }
    }
}

/// One transfer per transfer result code (but the chain and overflow codes), against
/// [`base`] at `T0 + SEC / 2`.
fn transfer_cases() -> Vec<(&'static str, Transfer, R)> {
    let max = u128::MAX;
    let t = transfer(1000, 1, 2, 7);
    vec![
        ("valid", t, R::Ok),
        ("valid hold", hold(1000, 1, 2, 7, 10), R::Ok),
        (
            "timestamp set",
            Transfer { timestamp: 1, ..t },
            R::TimestampMustBeZero,
        ),
        (
            "unknown flag",
            Transfer {
                flags: TransferFlags(1 << 12),
                ..t
            },
            R::ReservedFlag,
        ),
        ("id 0", Transfer { id: 0, ..t }, R::IdMustNotBeZero),
        ("id max", Transfer { id: max, ..t }, R::IdMustNotBeIntMax),
        // Idempotency: transfer 100 is 1 → 2, 10, ledger 1, code 1.
        ("retry of 100", transfer(100, 1, 2, 10), R::Exists),
        (
            "100 as a hold",
            hold(100, 1, 2, 10, 0),
            R::ExistsWithDifferentFlags,
        ),
        (
            "100 with pending id",
            Transfer {
                pending_id: 5,
                ..transfer(100, 1, 2, 10)
            },
            R::ExistsWithDifferentPendingId,
        ),
        (
            "100 with timeout",
            Transfer {
                timeout_ms: 5,
                ..transfer(100, 1, 2, 10)
            },
            R::ExistsWithDifferentTimeout,
        ),
        (
            "100 other debit",
            transfer(100, 6, 2, 10),
            R::ExistsWithDifferentDebitAccountId,
        ),
        (
            "100 other credit",
            transfer(100, 1, 6, 10),
            R::ExistsWithDifferentCreditAccountId,
        ),
        (
            "100 other amount",
            transfer(100, 1, 2, 11),
            R::ExistsWithDifferentAmount,
        ),
        (
            "100 other user data",
            Transfer {
                user_data: 1,
                ..transfer(100, 1, 2, 10)
            },
            R::ExistsWithDifferentUserData,
        ),
        (
            "100 other ledger",
            Transfer {
                ledger: 2,
                ..transfer(100, 1, 2, 10)
            },
            R::ExistsWithDifferentLedger,
        ),
        (
            "100 other code",
            Transfer {
                code: 2,
                ..transfer(100, 1, 2, 10)
            },
            R::ExistsWithDifferentCode,
        ),
        (
            "retry of post 301 (amount from hold)",
            post(301, 201, 0),
            R::Exists,
        ),
        (
            "retry of post 301 (amount given)",
            post(301, 201, 20),
            R::Exists,
        ),
        (
            "post 301 other amount",
            post(301, 201, 19),
            R::ExistsWithDifferentAmount,
        ),
        ("retry of void 302", void(302, 202), R::Exists),
        (
            "pending and post",
            Transfer {
                flags: TransferFlags::PENDING | TransferFlags::POST_PENDING_TRANSFER,
                ..t
            },
            R::FlagsAreMutuallyExclusive,
        ),
        (
            "post and void",
            Transfer {
                flags: TransferFlags::VOID_PENDING_TRANSFER | TransferFlags::POST_PENDING_TRANSFER,
                ..t
            },
            R::FlagsAreMutuallyExclusive,
        ),
        (
            "debit 0",
            transfer(1000, 0, 2, 7),
            R::DebitAccountIdMustNotBeZero,
        ),
        (
            "debit max",
            transfer(1000, max, 2, 7),
            R::DebitAccountIdMustNotBeIntMax,
        ),
        (
            "credit 0",
            transfer(1000, 1, 0, 7),
            R::CreditAccountIdMustNotBeZero,
        ),
        (
            "credit max",
            transfer(1000, 1, max, 7),
            R::CreditAccountIdMustNotBeIntMax,
        ),
        (
            "same account",
            transfer(1000, 1, 1, 7),
            R::AccountsMustBeDifferent,
        ),
        (
            "pending id on plain",
            Transfer {
                pending_id: 200,
                ..t
            },
            R::PendingIdMustBeZero,
        ),
        (
            "timeout on plain",
            Transfer { timeout_ms: 1, ..t },
            R::TimeoutReservedForPendingTransfer,
        ),
        (
            "zero amount",
            transfer(1000, 1, 2, 0),
            R::AmountMustNotBeZero,
        ),
        (
            "zero amount hold",
            hold(1000, 1, 2, 0, 0),
            R::AmountMustNotBeZero,
        ),
        (
            "ledger 0",
            Transfer { ledger: 0, ..t },
            R::LedgerMustNotBeZero,
        ),
        ("code 0", Transfer { code: 0, ..t }, R::CodeMustNotBeZero),
        (
            "unknown debit",
            transfer(1000, 99, 2, 7),
            R::DebitAccountNotFound,
        ),
        (
            "unknown credit",
            transfer(1000, 1, 99, 7),
            R::CreditAccountNotFound,
        ),
        (
            "unknown both",
            transfer(1000, 98, 99, 7),
            R::DebitAccountNotFound,
        ),
        (
            "ledgers differ",
            transfer(1000, 1, 3, 7),
            R::AccountsMustHaveTheSameLedger,
        ),
        (
            "transfer ledger differs",
            Transfer { ledger: 2, ..t },
            R::TransferMustHaveTheSameLedgerAsAccounts,
        ),
        (
            "post without pending id",
            post(1000, 0, 0),
            R::PendingIdMustNotBeZero,
        ),
        (
            "post pending id max",
            post(1000, max, 0),
            R::PendingIdMustNotBeIntMax,
        ),
        (
            "post of itself",
            post(1000, 1000, 0),
            R::PendingIdMustBeDifferent,
        ),
        (
            "post with timeout",
            Transfer {
                timeout_ms: 3,
                ..post(1000, 200, 0)
            },
            R::TimeoutReservedForPendingTransfer,
        ),
        (
            "post same accounts",
            Transfer {
                debit_account_id: 1,
                credit_account_id: 1,
                ..post(1000, 200, 0)
            },
            R::AccountsMustBeDifferent,
        ),
        (
            "post of unknown hold",
            post(1000, 999, 0),
            R::PendingTransferNotFound,
        ),
        (
            "void of unknown hold",
            void(1000, 999),
            R::PendingTransferNotFound,
        ),
        (
            "post of a plain transfer",
            post(1000, 100, 0),
            R::PendingTransferNotPending,
        ),
        (
            "post other debit",
            Transfer {
                debit_account_id: 6,
                ..post(1000, 200, 0)
            },
            R::PendingTransferHasDifferentDebitAccountId,
        ),
        (
            "post other credit",
            Transfer {
                credit_account_id: 6,
                ..post(1000, 200, 0)
            },
            R::PendingTransferHasDifferentCreditAccountId,
        ),
        (
            "post other ledger",
            Transfer {
                ledger: 2,
                ..post(1000, 200, 0)
            },
            R::PendingTransferHasDifferentLedger,
        ),
        (
            "post other code",
            Transfer {
                code: 2,
                ..post(1000, 200, 0)
            },
            R::PendingTransferHasDifferentCode,
        ),
        (
            "post naming the hold's fields",
            Transfer {
                debit_account_id: 1,
                credit_account_id: 2,
                ledger: 1,
                code: 1,
                ..post(1000, 200, 50)
            },
            R::Ok,
        ),
        (
            "post of more than held",
            post(1000, 200, 51),
            R::ExceedsPendingTransferAmount,
        ),
        (
            "void of another amount",
            Transfer {
                amount: 49,
                ..void(1000, 200)
            },
            R::PendingTransferHasDifferentAmount,
        ),
        (
            "void of the held amount",
            Transfer {
                amount: 50,
                ..void(1000, 200)
            },
            R::Ok,
        ),
        (
            "double post",
            post(1000, 201, 0),
            R::PendingTransferAlreadyPosted,
        ),
        (
            "void after post",
            void(1000, 201),
            R::PendingTransferAlreadyPosted,
        ),
        (
            "post after void",
            post(1000, 202, 0),
            R::PendingTransferAlreadyVoided,
        ),
        (
            "double void",
            void(1000, 202),
            R::PendingTransferAlreadyVoided,
        ),
        (
            "post of expired hold",
            post(1000, 203, 0),
            R::PendingTransferExpired,
        ),
        (
            "void of expired hold",
            void(1000, 203),
            R::PendingTransferExpired,
        ),
        (
            "exceeds credits",
            transfer(1000, 4, 2, 1),
            R::ExceedsCredits,
        ),
        (
            "hold exceeds credits",
            hold(1000, 4, 2, 1, 0),
            R::ExceedsCredits,
        ),
        ("exceeds debits", transfer(1000, 1, 5, 1), R::ExceedsDebits),
        (
            "timeout overflows",
            hold(1000, 1, 2, 7, u64::MAX / NS_PER_MS),
            R::OverflowsTimeout,
        ),
    ]
}

#[test]
fn every_bad_transfer_gets_its_own_code_and_nothing_is_applied() {
    let cases = transfer_cases();
    let start = base();
    for (name, t, want) in cases {
        let mut s = start.clone();
        let got = results(s.create_transfers(&[t], T0 + SEC / 2));
        assert_eq!(got, vec![want], "{name}");
        assert!(s.check_consistency().is_ok(), "{name}");
        let (dp, dpo, cp, cpo) = s.totals();
        assert_eq!((dp, dpo), (cp, cpo), "{name}: double entry");
        if want != R::Ok {
            let mut u = start.clone();
            u.last_timestamp = s.last_timestamp();
            assert_eq!(s, u, "{name}: nothing but the clock changed");
        }
    }
}

#[test]
fn every_result_code_is_covered_by_a_table_and_has_a_wire_code() {
    use std::collections::BTreeSet;
    // The chain codes have tests of their own (linked chains, open chains).
    let chains = [A::LinkedEventFailed, A::LinkedEventChainOpen];
    let covered: BTreeSet<A> = account_cases().iter().map(|c| c.2).chain(chains).collect();
    let missing: Vec<_> = A::ALL.iter().filter(|r| !covered.contains(r)).collect();
    assert!(
        missing.is_empty(),
        "account codes without a case: {missing:?}"
    );
    let chains = [R::LinkedEventFailed, R::LinkedEventChainOpen];
    let covered: BTreeSet<R> = transfer_cases()
        .iter()
        .map(|c| c.2)
        .chain(overflow_cases().iter().map(|c| c.3))
        .chain(chains)
        .collect();
    let missing: Vec<_> = R::ALL.iter().filter(|r| !covered.contains(r)).collect();
    assert!(
        missing.is_empty(),
        "transfer codes without a case: {missing:?}"
    );
    for r in CreateTransferResult::ALL {
        assert_eq!(CreateTransferResult::from_code(*r as u8), Some(*r));
        assert!(!r.as_str().is_empty());
    }
    for r in CreateAccountResult::ALL {
        assert_eq!(CreateAccountResult::from_code(*r as u8), Some(*r));
    }
    assert_eq!(CreateTransferResult::from_code(200), None);
    assert_eq!(
        CreateTransferResult::ExceedsCredits.to_string(),
        "exceeds_credits"
    );
}

/// Accounts 1 and 2 (ledger 1) with the given balances, reached through transfers from
/// account 9.
fn rich(dr_posted_1: u128, cr_posted_2: u128, pending: u128) -> LedgerState {
    let mut s = LedgerState::new();
    s.create_accounts(
        &[
            account(1, 1, AccountFlags::default()),
            account(2, 1, AccountFlags::default()),
            account(9, 1, AccountFlags::default()),
        ],
        T0,
    );
    let mut batch = vec![];
    if dr_posted_1 > 0 {
        batch.push(transfer(1, 1, 9, dr_posted_1));
    }
    if cr_posted_2 > 0 {
        batch.push(transfer(2, 9, 2, cr_posted_2));
    }
    if pending > 0 {
        batch.push(hold(3, 1, 2, pending, 0));
    }
    let r = results(s.create_transfers(&batch, T0));
    assert!(r.iter().all(|r| *r == R::Ok), "{r:?}");
    s
}

/// One case per overflow code: a start state, the transfer and its result.
fn overflow_cases() -> Vec<(&'static str, LedgerState, Transfer, R)> {
    let max = u128::MAX;
    vec![
        (
            "debits posted",
            rich(max, 0, 0),
            transfer(10, 1, 2, 1),
            R::OverflowsDebitsPosted,
        ),
        (
            "credits posted",
            rich(0, max, 0),
            transfer(10, 1, 2, 1),
            R::OverflowsCreditsPosted,
        ),
        (
            "debits pending",
            rich(0, 0, max),
            hold(10, 1, 2, 1, 0),
            R::OverflowsDebitsPending,
        ),
        (
            "credits pending",
            {
                // Account 2 has all the pending credits but account 6 debits them.
                let mut s = rich(0, 0, max);
                s.create_accounts(&[account(6, 1, AccountFlags::default())], T0);
                s
            },
            hold(10, 6, 2, 1, 0),
            R::OverflowsCreditsPending,
        ),
        (
            "debits pending + posted",
            rich(0, 0, max),
            transfer(10, 1, 2, 1),
            R::OverflowsDebits,
        ),
        (
            "credits pending + posted",
            {
                let mut s = rich(0, 0, max);
                s.create_accounts(&[account(6, 1, AccountFlags::default())], T0);
                s
            },
            transfer(10, 6, 2, 1),
            R::OverflowsCredits,
        ),
        (
            "post beside posted debits",
            {
                let mut s = rich(max - 5, 0, 0);
                s.create_transfers(&[hold(3, 1, 2, 5, 0)], T0);
                s
            },
            post(10, 3, 0),
            R::Ok,
        ),
    ]
}

#[test]
fn overflows_are_refused_with_their_own_codes() {
    let cases = overflow_cases();
    for (name, start, t, want) in cases {
        let mut s = start.clone();
        assert_eq!(
            results(s.create_transfers(&[t], T0 + SEC)),
            vec![want],
            "{name}"
        );
        if want != R::Ok {
            let mut u = start.clone();
            u.last_timestamp = s.last_timestamp();
            assert_eq!(s, u, "{name}: nothing applied");
        }
        assert!(s.check_consistency().is_ok(), "{name}");
    }
}

#[test]
fn limits_count_pending_and_posted_amounts() {
    let mut s = LedgerState::new();
    s.create_accounts(
        &[
            account(1, 1, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS),
            account(2, 1, AccountFlags::default()),
        ],
        T0,
    );
    // Fund 1 with 100, hold 60, then 41 more is refused and 40 accepted.
    let r = s.create_transfers(
        &[
            transfer(1, 2, 1, 100),
            hold(2, 1, 2, 60, 0),
            transfer(3, 1, 2, 41),
            transfer(4, 1, 2, 40),
        ],
        T0,
    );
    assert_eq!(results(r), vec![R::Ok, R::Ok, R::ExceedsCredits, R::Ok]);
    // Voiding the hold frees its 60.
    let r = s.create_transfers(
        &[void(5, 2), transfer(6, 1, 2, 60), transfer(7, 1, 2, 1)],
        T0,
    );
    assert_eq!(results(r), vec![R::Ok, R::Ok, R::ExceedsCredits]);
    assert_eq!(balances(&s, 1), [0, 100, 0, 100]);
}

#[test]
fn a_partial_post_moves_part_of_the_hold_and_releases_the_rest() {
    let mut s = base();
    let before1 = balances(&s, 1);
    let before2 = balances(&s, 2);
    assert_eq!(
        results(s.create_transfers(&[post(1000, 200, 20)], T0 + SEC / 2)),
        vec![R::Ok]
    );
    assert_eq!(balances(&s, 1), [before1[0] - 50, before1[1] + 20, 0, 0]);
    assert_eq!(balances(&s, 2), [0, 0, before2[2] - 50, before2[3] + 20]);
    let h = s.hold(200).unwrap();
    assert_eq!((h.status, h.resolved_by), (HoldStatus::Posted, 1000));
    assert_eq!(s.lookup_transfers(&[1000])[0].amount, 20);
    // The stored post carries the hold's accounts, ledger and code.
    let p = s.lookup_transfers(&[1000])[0];
    assert_eq!(
        (p.debit_account_id, p.credit_account_id, p.ledger, p.code),
        (1, 2, 1, 1)
    );
    // The rest can not be posted later: a hold is resolved once.
    assert_eq!(
        results(s.create_transfers(&[post(1001, 200, 30)], T0 + SEC / 2)),
        vec![R::PendingTransferAlreadyPosted]
    );
}

#[test]
fn holds_expire_at_their_deadline_and_not_before() {
    let mut s = base();
    // Hold 200: 50, created at about T0 + 1 ms with a 1 s timeout.
    let deadline = s.hold(200).unwrap().expires_at;
    assert_eq!(deadline, s.lookup_transfers(&[200])[0].timestamp + SEC);
    assert_eq!(s.expire_pending(deadline - 1), Vec::<u128>::new());
    assert_eq!(s.hold(200).unwrap().status, HoldStatus::Pending);
    let pending_before = balances(&s, 1)[0];
    assert_eq!(s.expire_pending(deadline), vec![200]);
    let h = s.hold(200).unwrap();
    assert_eq!(h.status, HoldStatus::Expired);
    assert_eq!(h.resolved_at, deadline);
    assert_eq!(balances(&s, 1)[0], pending_before - 50);
    assert_eq!(
        results(s.create_transfers(&[post(1000, 200, 0), void(1001, 200)], deadline + 5)),
        vec![R::PendingTransferExpired, R::PendingTransferExpired]
    );
    assert!(s.check_consistency().is_ok());
}

#[test]
fn a_batch_expires_due_holds_before_its_transfers() {
    let mut s = base();
    let deadline = s.hold(200).unwrap().expires_at;
    // No expire_pending call: the batch at the deadline sweeps first.
    let r = s.create_transfers(&[post(1000, 200, 0)], deadline);
    assert_eq!(results(r), vec![R::PendingTransferExpired]);
    assert_eq!(s.hold(200).unwrap().status, HoldStatus::Expired);
    // And a post just before the deadline succeeds.
    let mut s = base();
    let r = s.create_transfers(&[post(1000, 200, 0)], deadline - 1);
    assert_eq!(results(r), vec![R::Ok]);
    assert_eq!(s.expire_pending(deadline + SEC), Vec::<u128>::new());
}

#[test]
fn a_hold_whose_deadline_falls_inside_the_batch_is_expired_for_later_events() {
    let mut s = base();
    let deadline = s.hold(200).unwrap().expires_at;
    // The batch starts 2 ns before the deadline: events 0 and 1 come before it, event 2 at
    // it. The sweep at the start does not expire 200, the event check does.
    let batch = [
        transfer(1000, 1, 2, 1),
        transfer(1001, 1, 2, 1),
        post(1002, 200, 0),
    ];
    let r = s.create_transfers(&batch, deadline - 2);
    assert_eq!(results(r), vec![R::Ok, R::Ok, R::PendingTransferExpired]);
}

#[test]
fn a_linked_chain_is_applied_whole_or_rolled_back_whole() {
    let start = base();
    // The third event fails: the first two (a transfer, a hold and a post of an older
    // hold) are rolled back, the fourth is not tried, the fifth (own chain) applies.
    let batch = [
        linked(transfer(1000, 1, 2, 5)),
        linked(hold(1001, 1, 2, 5, 10)),
        linked(post(1002, 200, 0)),
        linked(transfer(1003, 1, 99, 5)),
        transfer(1004, 1, 2, 5),
        transfer(1005, 1, 2, 6),
    ];
    let mut s = start.clone();
    let r = s.create_transfers(&batch, T0 + SEC / 2);
    assert_eq!(
        results(r),
        vec![
            R::LinkedEventFailed,
            R::LinkedEventFailed,
            R::LinkedEventFailed,
            R::CreditAccountNotFound,
            R::LinkedEventFailed,
            R::Ok
        ]
    );
    assert!(
        s.lookup_transfers(&[1000, 1001, 1002, 1003, 1004])
            .is_empty()
    );
    assert_eq!(s.hold(200).unwrap().status, HoldStatus::Pending);
    assert!(s.hold(1001).is_none());
    assert_eq!(balances(&s, 2)[3], balances(&start, 2)[3] + 6);
    assert!(s.check_consistency().is_ok());
    // The same chain without the bad event applies whole, including a post of a hold
    // created earlier in the chain.
    let batch = [
        linked(transfer(1000, 1, 2, 5)),
        linked(hold(1001, 1, 2, 5, 10)),
        linked(post(1002, 1001, 0)),
        transfer(1003, 1, 2, 5),
    ];
    let r = s.create_transfers(&batch, T0 + SEC / 2);
    assert_eq!(results(r), vec![R::Ok; 4]);
    assert_eq!(s.hold(1001).unwrap().status, HoldStatus::Posted);
}

#[test]
fn a_chain_rolls_back_a_post_and_its_hold_stays_postable() {
    let mut s = base();
    let r = s.create_transfers(
        &[linked(post(1000, 200, 0)), transfer(1001, 1, 1, 1)],
        T0 + SEC / 2,
    );
    assert_eq!(
        results(r),
        vec![R::LinkedEventFailed, R::AccountsMustBeDifferent]
    );
    // The hold is pending again, with its expiry.
    let deadline = s.hold(200).unwrap().expires_at;
    assert_eq!(s.hold(200).unwrap().status, HoldStatus::Pending);
    assert_eq!(s.expire_pending(deadline), vec![200]);
}

#[test]
fn a_chain_left_open_at_the_end_of_the_batch_is_not_applied() {
    let mut s = base();
    let r = s.create_transfers(
        &[
            transfer(1000, 1, 2, 5),
            linked(transfer(1001, 1, 2, 5)),
            linked(transfer(1002, 1, 2, 5)),
        ],
        T0 + SEC / 2,
    );
    assert_eq!(
        results(r),
        vec![R::Ok, R::LinkedEventFailed, R::LinkedEventChainOpen]
    );
    assert!(s.lookup_transfers(&[1001, 1002]).is_empty());
    // Accounts too.
    let r = s.create_accounts(
        &[Account {
            flags: AccountFlags::LINKED,
            ..account(50, 1, AccountFlags::default())
        }],
        T0,
    );
    assert_eq!(results(r), vec![A::LinkedEventChainOpen]);
    assert!(s.lookup_accounts(&[50]).is_empty());
}

#[test]
fn linked_accounts_are_created_together_or_not_at_all() {
    let mut s = LedgerState::new();
    let l = |a: Account| Account {
        flags: a.flags | AccountFlags::LINKED,
        ..a
    };
    let r = s.create_accounts(
        &[
            l(account(1, 1, AccountFlags::default())),
            account(0, 1, AccountFlags::default()),
            account(2, 1, AccountFlags::default()),
        ],
        T0,
    );
    assert_eq!(
        results(r),
        vec![A::LinkedEventFailed, A::IdMustNotBeZero, A::Ok]
    );
    assert_eq!(s.account_count(), 1);
}

#[test]
fn a_retry_of_an_applied_chain_answers_exists_and_fails_the_chain() {
    let mut s = base();
    let batch = [linked(transfer(1000, 1, 2, 5)), transfer(1001, 1, 2, 5)];
    assert_eq!(
        results(s.create_transfers(&batch, T0 + SEC / 2)),
        vec![R::Ok, R::Ok]
    );
    let count = s.transfer_count();
    // As in TigerBeetle, `exists` is not `ok`, so it fails its chain: nothing new applies.
    assert_eq!(
        results(s.create_transfers(&batch, T0 + SEC / 2)),
        vec![R::Exists, R::LinkedEventFailed]
    );
    assert_eq!(s.transfer_count(), count);
}

#[test]
fn a_transfer_id_is_applied_once_even_within_one_batch() {
    let mut s = base();
    let before = balances(&s, 2);
    let t = transfer(1000, 1, 2, 5);
    let r = s.create_transfers(&[t, t, Transfer { amount: 6, ..t }], T0 + SEC / 2);
    assert_eq!(
        results(r),
        vec![R::Ok, R::Exists, R::ExistsWithDifferentAmount]
    );
    assert_eq!(balances(&s, 2)[3], before[3] + 5);
    // And in a later batch.
    let r = s.create_transfers(&[t], T0 + 5 * SEC);
    assert_eq!(results(r), vec![R::Exists]);
    assert_eq!(balances(&s, 2)[3], before[3] + 5);
}

#[test]
fn timestamps_strictly_increase_even_when_the_leader_clock_goes_back() {
    let mut s = base();
    let last = s.last_timestamp();
    s.create_transfers(
        &[transfer(1000, 1, 2, 1), transfer(1001, 1, 2, 1)],
        T0 - SEC,
    );
    let ts: Vec<u64> = s
        .lookup_transfers(&[1000, 1001])
        .iter()
        .map(|t| t.timestamp)
        .collect();
    assert_eq!(ts, vec![last + 1, last + 2]);
    // The expiry of hold 200 takes the batch's first timestamp; a failed event also takes
    // its own (its place in the batch).
    s.create_transfers(
        &[transfer(1002, 1, 99, 1), transfer(1003, 1, 2, 1)],
        T0 + 100 * SEC,
    );
    assert_eq!(s.hold(200).unwrap().resolved_at, T0 + 100 * SEC);
    assert_eq!(s.lookup_transfers(&[1003])[0].timestamp, T0 + 100 * SEC + 2);
    assert_eq!(s.last_timestamp(), T0 + 100 * SEC + 2);
}

#[test]
fn reads_page_through_accounts_transfers_holds_and_history() {
    let mut s = base();
    // Lookups keep the order asked and leave out unknown ids.
    let ids: Vec<u128> = s
        .lookup_accounts(&[2, 99, 1])
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, vec![2, 1]);
    let ids: Vec<u128> = s
        .lookup_transfers(&[301, 100, 5])
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, vec![301, 100]);
    // Account 1's history: 100, 200..204, 301, 302 in timestamp order, two per page.
    let mut seen = vec![];
    let mut after = 0;
    loop {
        let page = s.account_transfers(1, after, 2);
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        after = page.last().unwrap().timestamp;
        seen.extend(page.iter().map(|t| t.id));
    }
    assert_eq!(seen, vec![100, 200, 201, 202, 203, 204, 301, 302]);
    assert!(s.account_transfers(99, 0, 10).is_empty());
    assert!(s.account_transfers(1, u64::MAX, 10).is_empty());
    // Bulk read by range.
    let ids: Vec<u128> = s.accounts_in_range(2, 5, 10).iter().map(|a| a.id).collect();
    assert_eq!(ids, vec![2, 3, 4, 5]);
    let ids: Vec<u128> = s.accounts_in_range(2, 5, 2).iter().map(|a| a.id).collect();
    assert_eq!(ids, vec![2, 3]);
    assert!(s.accounts_in_range(5, 2, 10).is_empty());
    // Holds by status.
    let st = |f: Option<HoldStatus>| -> Vec<(u128, HoldStatus)> {
        s.pending(f, 0, 10)
            .iter()
            .map(|h| (h.transfer.id, h.status))
            .collect()
    };
    assert_eq!(
        st(None),
        vec![
            (200, HoldStatus::Pending),
            (201, HoldStatus::Posted),
            (202, HoldStatus::Voided),
            (203, HoldStatus::Expired),
            (204, HoldStatus::Pending)
        ]
    );
    assert_eq!(
        st(Some(HoldStatus::Pending)),
        vec![(200, HoldStatus::Pending), (204, HoldStatus::Pending)]
    );
    assert_eq!(s.pending(None, 201, 2).len(), 2);
    assert_eq!(s.pending_count(), 2);
    // History: only account 7 keeps balances.
    s.create_transfers(
        &[
            transfer(1000, 1, 7, 5),
            hold(1001, 7, 1, 3, 0),
            void(1002, 1001),
        ],
        T0 + SEC / 2,
    );
    let h = s.account_balances(7, 0, 10);
    let rows: Vec<[u128; 4]> = h
        .iter()
        .map(|b| {
            [
                b.debits_pending,
                b.debits_posted,
                b.credits_pending,
                b.credits_posted,
            ]
        })
        .collect();
    assert_eq!(rows, vec![[0, 0, 0, 5], [3, 0, 0, 5], [0, 0, 0, 5]]);
    assert_eq!(h[0].timestamp, s.lookup_transfers(&[1000])[0].timestamp);
    assert!(s.account_balances(1, 0, 10).is_empty());
    assert_eq!(s.account_balances(7, h[0].timestamp, 10).len(), 2);
}

#[test]
fn apply_dispatches_commands_and_commands_round_trip_through_bytes() {
    let cmds = [
        LedgerCommand::CreateAccounts(vec![
            account(1, 1, AccountFlags::HISTORY),
            Account {
                user_data: u128::MAX - 3,
                ..account(2, 1, AccountFlags::default())
            },
        ]),
        LedgerCommand::CreateTransfers(vec![
            hold(1, 1, 2, u128::MAX / 3, 5),
            Transfer {
                user_data: 77,
                ..transfer(2, 2, 1, 9)
            },
        ]),
        LedgerCommand::ExpirePending,
        LedgerCommand::CreateTransfers(vec![]),
    ];
    let mut s = LedgerState::new();
    let mut replies = vec![];
    for (i, c) in cmds.iter().enumerate() {
        let bytes = c.encode();
        assert_eq!(&LedgerCommand::decode(&bytes).unwrap(), c);
        replies.push(s.apply(c, T0 + i as u64 * SEC));
    }
    assert_eq!(
        replies,
        vec![
            LedgerReply::Accounts(vec![(0, A::Ok), (1, A::Ok)]),
            LedgerReply::Transfers(vec![(0, R::Ok), (1, R::Ok)]),
            LedgerReply::Expired(vec![1]),
            LedgerReply::Transfers(vec![]),
        ]
    );
    // Garbage commands are errors, never panics.
    let good = cmds[1].encode();
    for len in 0..good.len() {
        assert!(LedgerCommand::decode(&good[..len]).is_err(), "prefix {len}");
    }
    let mut long = good.clone();
    long.push(0);
    assert!(LedgerCommand::decode(&long).is_err());
    assert!(
        LedgerCommand::decode(&[2, 1, 0, 0, 0, 0]).is_err(),
        "version"
    );
    assert!(LedgerCommand::decode(&[1, 9]).is_err(), "kind");
    assert!(
        LedgerCommand::decode(&[1, 2, 255, 255, 255, 255]).is_err(),
        "huge count"
    );
}

#[test]
fn snapshots_round_trip_and_reject_garbage() {
    let s = base();
    let bytes = s.encode();
    let d = LedgerState::decode(&bytes).unwrap();
    assert_eq!(d, s);
    assert_eq!(d.state_hash(), s.state_hash());
    assert_eq!(
        LedgerState::decode(&LedgerState::new().encode()).unwrap(),
        LedgerState::new()
    );
    // The hash tells states apart.
    let mut other = s.clone();
    other.create_transfers(&[transfer(1000, 1, 2, 1)], T0 + SEC / 2);
    assert_ne!(other.state_hash(), s.state_hash());
    // Every strict prefix, every flipped byte and extra bytes: an error or a consistent
    // state, never a panic.
    for len in 0..bytes.len() {
        assert!(LedgerState::decode(&bytes[..len]).is_err(), "prefix {len}");
    }
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            if let Ok(d) = LedgerState::decode(&b) {
                assert!(d.check_consistency().is_ok());
            }
        }
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(LedgerState::decode(&long).is_err());
    assert!(LedgerState::decode(b"garbage!garbage!").is_err());
    // A balance that does not add up is refused: flip a bit of account 1's debits_posted
    // (magic 4 + version 1 + last 8 + count 8, then id 16, user data 16, debits pending 16).
    let mut b = bytes.clone();
    b[21 + 48] ^= 1;
    let e = LedgerState::decode(&b).unwrap_err();
    assert!(e.to_string().contains("differ"), "{e}");
}

#[test]
fn the_state_hash_depends_only_on_the_commands_and_times() {
    let run = || {
        let mut s = base();
        s.create_transfers(&[transfer(1000, 1, 2, 1), hold(1001, 2, 6, 1, 1)], T0 + SEC);
        s.expire_pending(T0 + 3 * SEC);
        s.state_hash()
    };
    assert_eq!(run(), run());
    assert_eq!(hex(&run()).len(), 64, "a 32-byte digest");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn balances_are_signed_differences_of_the_posted_amounts() {
    let a = |dpo: u128, cpo: u128| Account {
        debits_posted: dpo,
        credits_posted: cpo,
        ..Account::default()
    };
    assert_eq!(a(10, 3).debit_balance(), 7);
    assert_eq!(a(10, 3).credit_balance(), -7);
    assert_eq!(a(u128::MAX, 0).debit_balance(), i128::MAX);
    assert_eq!(a(0, u128::MAX).debit_balance(), i128::MIN);
    assert_eq!(a(0, i128::MAX as u128).debit_balance(), -i128::MAX);
}
