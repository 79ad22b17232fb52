//! The ledger's records (accounts, transfers, holds) and the result code of every event.
//!
//! Units everywhere: ids are `u128`, amounts and balances `u128` minor units of the
//! account's ledger (currency), timestamps `u64` nanoseconds since the Unix epoch as stamped
//! by the state machine (never by a client), timeouts `u64` milliseconds.

/// Flags of an [`Account`], a bit set (`u16`); unknown bits are refused
/// ([`CreateAccountResult::ReservedFlag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AccountFlags(pub u16);

impl AccountFlags {
    /// This event and the next one of the batch succeed or fail together (see
    /// [`crate::ledger`], "Linked events"). Not stored in the account's meaning, but kept as
    /// submitted.
    pub const LINKED: AccountFlags = AccountFlags(1);
    /// `debits_pending + debits_posted` may never exceed `credits_posted` (an asset can not
    /// be overdrawn: a customer's balance with a bank). Refused with
    /// [`CreateTransferResult::ExceedsCredits`].
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: AccountFlags = AccountFlags(1 << 1);
    /// `credits_pending + credits_posted` may never exceed `debits_posted`. Refused with
    /// [`CreateTransferResult::ExceedsDebits`].
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: AccountFlags = AccountFlags(1 << 2);
    /// Keep the account's balances after every transfer and expiry that changes them
    /// ([`super::LedgerState::account_balances`]).
    pub const HISTORY: AccountFlags = AccountFlags(1 << 3);
    /// Every bit defined above.
    pub const ALL: AccountFlags = AccountFlags(0b1111);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: AccountFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for AccountFlags {
    type Output = AccountFlags;
    fn bitor(self, rhs: AccountFlags) -> AccountFlags {
        AccountFlags(self.0 | rhs.0)
    }
}

/// Flags of a [`Transfer`], a bit set (`u16`); unknown bits are refused
/// ([`CreateTransferResult::ReservedFlag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TransferFlags(pub u16);

impl TransferFlags {
    /// This event and the next one of the batch succeed or fail together.
    pub const LINKED: TransferFlags = TransferFlags(1);
    /// A hold: the amount goes to `debits_pending` / `credits_pending` until a later transfer
    /// posts or voids it, or its timeout expires it.
    pub const PENDING: TransferFlags = TransferFlags(1 << 1);
    /// Post (part of) the hold named by `pending_id`.
    pub const POST_PENDING_TRANSFER: TransferFlags = TransferFlags(1 << 2);
    /// Release the hold named by `pending_id`.
    pub const VOID_PENDING_TRANSFER: TransferFlags = TransferFlags(1 << 3);
    /// Every bit defined above.
    pub const ALL: TransferFlags = TransferFlags(0b1111);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: TransferFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for TransferFlags {
    type Output = TransferFlags;
    fn bitor(self, rhs: TransferFlags) -> TransferFlags {
        TransferFlags(self.0 | rhs.0)
    }
}

/// An account: four balances that only transfers (and expiries) change.
///
/// Submitted to [`super::LedgerState::create_accounts`] with the balances and `timestamp`
/// zero; the state machine sets `timestamp`. Each stored account takes about 200 bytes
/// (the 128-byte record plus its B-tree slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Account {
    /// Client-chosen id, unique in the ledger; neither 0 nor `u128::MAX`.
    pub id: u128,
    /// Opaque client data (for instance a customer id), compared by idempotent retries.
    pub user_data: u128,
    /// Minor units reserved by pending debits (holds) not yet posted, voided or expired.
    pub debits_pending: u128,
    /// Minor units debited for good.
    pub debits_posted: u128,
    /// Minor units reserved by pending credits.
    pub credits_pending: u128,
    /// Minor units credited for good.
    pub credits_posted: u128,
    /// Ledger (currency or asset) of the account; transfers only join accounts of the same
    /// ledger. Not 0.
    pub ledger: u32,
    /// Client-defined kind of account (chart of accounts). Not 0.
    pub code: u16,
    /// [`AccountFlags`].
    pub flags: AccountFlags,
    /// Nanoseconds since the Unix epoch when the state machine created it (0 on input).
    pub timestamp: u64,
}

impl Account {
    /// `debits_posted - credits_posted` (what an asset account "has"), saturating at the
    /// ends of `i128`.
    pub fn debit_balance(&self) -> i128 {
        signed_difference(self.debits_posted, self.credits_posted)
    }

    /// `credits_posted - debits_posted` (what a liability account, such as a customer's
    /// deposit at the bank, "has"), saturating at the ends of `i128`.
    pub fn credit_balance(&self) -> i128 {
        signed_difference(self.credits_posted, self.debits_posted)
    }
}

/// `a - b` as an `i128`, saturating.
fn signed_difference(a: u128, b: u128) -> i128 {
    if a >= b {
        i128::try_from(a - b).unwrap_or(i128::MAX)
    } else {
        i128::try_from(b - a).map_or(i128::MIN, |d| -d)
    }
}

/// A transfer: an immutable movement of `amount` minor units from `debit_account_id` to
/// `credit_account_id`, or a hold, or the post or void of a hold.
///
/// Submitted to [`super::LedgerState::create_transfers`] with `timestamp` 0. A post or void
/// may leave `debit_account_id`, `credit_account_id`, `ledger`, `code` and `amount` at 0 to
/// take them from the hold; the stored transfer has them filled in (and `amount` is what was
/// actually posted or released). Each stored transfer takes about 250 bytes (the 112-byte
/// record, its B-tree slot and two entries in the per-account index), a hold another 60.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfer {
    /// Client-chosen id, unique in the ledger (the idempotency key); neither 0 nor
    /// `u128::MAX`.
    pub id: u128,
    /// The account debited.
    pub debit_account_id: u128,
    /// The account credited.
    pub credit_account_id: u128,
    /// Minor units; not 0 for a plain transfer or a hold. For a post: 0 posts the whole
    /// hold, less posts part of it and releases the rest. For a void: 0 or the hold's amount.
    pub amount: u128,
    /// For a post or void, the id of the hold; otherwise 0.
    pub pending_id: u128,
    /// Opaque client data, compared by idempotent retries.
    pub user_data: u128,
    /// For a hold: milliseconds after its timestamp at which it expires (0: never).
    /// Otherwise 0.
    pub timeout_ms: u64,
    /// Ledger of both accounts. Not 0 (0 allowed for a post or void: the hold's).
    pub ledger: u32,
    /// Client-defined kind of transfer. Not 0 (0 allowed for a post or void: the hold's).
    pub code: u16,
    /// [`TransferFlags`].
    pub flags: TransferFlags,
    /// Nanoseconds since the Unix epoch when the state machine applied it (0 on input).
    pub timestamp: u64,
}

/// What became of a hold (a transfer with [`TransferFlags::PENDING`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HoldStatus {
    /// Still reserving its amount.
    Pending = 1,
    /// Posted (wholly or partly) by a later transfer.
    Posted = 2,
    /// Released by a later void.
    Voided = 3,
    /// Released because its timeout passed.
    Expired = 4,
}

impl HoldStatus {
    /// The status of its wire code (the discriminant), `None` for an unknown one.
    pub fn from_code(code: u8) -> Option<HoldStatus> {
        Some(match code {
            1 => HoldStatus::Pending,
            2 => HoldStatus::Posted,
            3 => HoldStatus::Voided,
            4 => HoldStatus::Expired,
            _ => return None,
        })
    }
}

/// A hold and its state, as listed by [`super::LedgerState::pending`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// The pending transfer itself.
    pub transfer: Transfer,
    /// Its state.
    pub status: HoldStatus,
    /// When it expires (nanoseconds since the epoch; 0: never).
    pub expires_at: u64,
    /// The post or void that resolved it (0: pending or expired).
    pub resolved_by: u128,
    /// When it was posted, voided or expired (0: still pending).
    pub resolved_at: u64,
}

/// An account's balances just after a change, kept for accounts with
/// [`AccountFlags::HISTORY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountBalance {
    /// Timestamp of the transfer or expiry that made the change.
    pub timestamp: u64,
    /// See [`Account::debits_pending`].
    pub debits_pending: u128,
    /// See [`Account::debits_posted`].
    pub debits_posted: u128,
    /// See [`Account::credits_pending`].
    pub credits_pending: u128,
    /// See [`Account::credits_posted`].
    pub credits_posted: u128,
}

macro_rules! result_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $code:literal => $text:literal, )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $code, )*
        }

        impl $name {
            /// Every code, in order of precedence.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The snake_case name (as TigerBeetle spells it; used in metrics labels and
            /// the API).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            /// The result of its wire code (the discriminant), `None` for an unknown one.
            pub fn from_code(code: u8) -> Option<$name> {
                match code { $($code => Some($name::$variant),)* _ => None }
            }

            /// Whether the event was applied now or before (`ok` or `exists`).
            pub fn is_success(self) -> bool {
                matches!(self, $name::Ok | $name::Exists)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use result_enum;

result_enum! {
    /// The result of one account of a [`super::LedgerState::create_accounts`] batch.
    ///
    /// The checks run in the order of the discriminants; the first that fails is the
    /// result. `exists_with_different_*` is split per field, as in TigerBeetle, so that a
    /// client can tell which field of its retry differs (flags first, then user data,
    /// ledger, code).
    CreateAccountResult {
        /// Created.
        Ok = 0 => "ok",
        /// Another event of its linked chain failed; nothing of the chain was applied.
        LinkedEventFailed = 1 => "linked_event_failed",
        /// The batch's last event has the linked flag: the chain is not closed.
        LinkedEventChainOpen = 2 => "linked_event_chain_open",
        /// `timestamp` was not 0 (the state machine sets it).
        TimestampMustBeZero = 3 => "timestamp_must_be_zero",
        /// A flag bit not defined by [`AccountFlags`].
        ReservedFlag = 4 => "reserved_flag",
        /// `id` was 0.
        IdMustNotBeZero = 5 => "id_must_not_be_zero",
        /// `id` was `u128::MAX`.
        IdMustNotBeIntMax = 6 => "id_must_not_be_int_max",
        /// Both balance limits set.
        FlagsAreMutuallyExclusive = 7 => "flags_are_mutually_exclusive",
        /// `debits_pending` was not 0.
        DebitsPendingMustBeZero = 8 => "debits_pending_must_be_zero",
        /// `debits_posted` was not 0.
        DebitsPostedMustBeZero = 9 => "debits_posted_must_be_zero",
        /// `credits_pending` was not 0.
        CreditsPendingMustBeZero = 10 => "credits_pending_must_be_zero",
        /// `credits_posted` was not 0.
        CreditsPostedMustBeZero = 11 => "credits_posted_must_be_zero",
        /// `ledger` was 0.
        LedgerMustNotBeZero = 12 => "ledger_must_not_be_zero",
        /// `code` was 0.
        CodeMustNotBeZero = 13 => "code_must_not_be_zero",
        /// The id exists with other flags.
        ExistsWithDifferentFlags = 14 => "exists_with_different_flags",
        /// The id exists with other user data.
        ExistsWithDifferentUserData = 15 => "exists_with_different_user_data",
        /// The id exists with another ledger.
        ExistsWithDifferentLedger = 16 => "exists_with_different_ledger",
        /// The id exists with another code.
        ExistsWithDifferentCode = 17 => "exists_with_different_code",
        /// The same account exists already (an idempotent retry): nothing changed.
        Exists = 18 => "exists",
    }
}

result_enum! {
    /// The result of one transfer of a [`super::LedgerState::create_transfers`] batch.
    ///
    /// The checks run in the order of the discriminants (input, then idempotency, then the
    /// accounts, then the hold, then arithmetic, then limits); the first that fails is the
    /// result and nothing of the event is applied. `exists_with_different_*` is split per
    /// field as in TigerBeetle. `exists` is checked right after the id, so a retry of an
    /// applied transfer answers `exists` even when the accounts have changed since.
    CreateTransferResult {
        /// Applied.
        Ok = 0 => "ok",
        /// Another event of its linked chain failed; nothing of the chain was applied.
        LinkedEventFailed = 1 => "linked_event_failed",
        /// The batch's last event has the linked flag: the chain is not closed.
        LinkedEventChainOpen = 2 => "linked_event_chain_open",
        /// `timestamp` was not 0.
        TimestampMustBeZero = 3 => "timestamp_must_be_zero",
        /// A flag bit not defined by [`TransferFlags`].
        ReservedFlag = 4 => "reserved_flag",
        /// `id` was 0.
        IdMustNotBeZero = 5 => "id_must_not_be_zero",
        /// `id` was `u128::MAX`.
        IdMustNotBeIntMax = 6 => "id_must_not_be_int_max",
        /// The id exists with other flags.
        ExistsWithDifferentFlags = 7 => "exists_with_different_flags",
        /// The id exists with another `pending_id`.
        ExistsWithDifferentPendingId = 8 => "exists_with_different_pending_id",
        /// The id exists with another timeout.
        ExistsWithDifferentTimeout = 9 => "exists_with_different_timeout",
        /// The id exists with another debit account.
        ExistsWithDifferentDebitAccountId = 10 => "exists_with_different_debit_account_id",
        /// The id exists with another credit account.
        ExistsWithDifferentCreditAccountId = 11 => "exists_with_different_credit_account_id",
        /// The id exists with another amount.
        ExistsWithDifferentAmount = 12 => "exists_with_different_amount",
        /// The id exists with other user data.
        ExistsWithDifferentUserData = 13 => "exists_with_different_user_data",
        /// The id exists with another ledger.
        ExistsWithDifferentLedger = 14 => "exists_with_different_ledger",
        /// The id exists with another code.
        ExistsWithDifferentCode = 15 => "exists_with_different_code",
        /// The same transfer was applied already (an idempotent retry): nothing changed.
        Exists = 16 => "exists",
        /// More than one of pending, post and void.
        FlagsAreMutuallyExclusive = 17 => "flags_are_mutually_exclusive",
        /// `debit_account_id` was 0 (plain transfer or hold).
        DebitAccountIdMustNotBeZero = 18 => "debit_account_id_must_not_be_zero",
        /// `debit_account_id` was `u128::MAX`.
        DebitAccountIdMustNotBeIntMax = 19 => "debit_account_id_must_not_be_int_max",
        /// `credit_account_id` was 0 (plain transfer or hold).
        CreditAccountIdMustNotBeZero = 20 => "credit_account_id_must_not_be_zero",
        /// `credit_account_id` was `u128::MAX`.
        CreditAccountIdMustNotBeIntMax = 21 => "credit_account_id_must_not_be_int_max",
        /// Debit and credit account are the same.
        AccountsMustBeDifferent = 22 => "accounts_must_be_different",
        /// `pending_id` set on a transfer that is neither a post nor a void.
        PendingIdMustBeZero = 23 => "pending_id_must_be_zero",
        /// A post or void without `pending_id`.
        PendingIdMustNotBeZero = 24 => "pending_id_must_not_be_zero",
        /// `pending_id` was `u128::MAX`.
        PendingIdMustNotBeIntMax = 25 => "pending_id_must_not_be_int_max",
        /// A post or void naming itself.
        PendingIdMustBeDifferent = 26 => "pending_id_must_be_different",
        /// A timeout on a transfer that is not a hold.
        TimeoutReservedForPendingTransfer = 27 => "timeout_reserved_for_pending_transfer",
        /// `amount` was 0 on a plain transfer or a hold.
        AmountMustNotBeZero = 28 => "amount_must_not_be_zero",
        /// `ledger` was 0 on a plain transfer or a hold.
        LedgerMustNotBeZero = 29 => "ledger_must_not_be_zero",
        /// `code` was 0 on a plain transfer or a hold.
        CodeMustNotBeZero = 30 => "code_must_not_be_zero",
        /// No account has `debit_account_id`.
        DebitAccountNotFound = 31 => "debit_account_not_found",
        /// No account has `credit_account_id`.
        CreditAccountNotFound = 32 => "credit_account_not_found",
        /// The two accounts have different ledgers.
        AccountsMustHaveTheSameLedger = 33 => "accounts_must_have_the_same_ledger",
        /// The transfer's ledger is not its accounts' ledger.
        TransferMustHaveTheSameLedgerAsAccounts = 34 => "transfer_must_have_the_same_ledger_as_accounts",
        /// No transfer has `pending_id`.
        PendingTransferNotFound = 35 => "pending_transfer_not_found",
        /// The transfer named by `pending_id` is not a hold.
        PendingTransferNotPending = 36 => "pending_transfer_not_pending",
        /// A post or void naming another debit account than the hold's.
        PendingTransferHasDifferentDebitAccountId = 37 => "pending_transfer_has_different_debit_account_id",
        /// A post or void naming another credit account than the hold's.
        PendingTransferHasDifferentCreditAccountId = 38 => "pending_transfer_has_different_credit_account_id",
        /// A post or void naming another ledger than the hold's.
        PendingTransferHasDifferentLedger = 39 => "pending_transfer_has_different_ledger",
        /// A post or void naming another code than the hold's.
        PendingTransferHasDifferentCode = 40 => "pending_transfer_has_different_code",
        /// A post of more than the hold's amount.
        ExceedsPendingTransferAmount = 41 => "exceeds_pending_transfer_amount",
        /// A void with an amount other than 0 or the hold's amount.
        PendingTransferHasDifferentAmount = 42 => "pending_transfer_has_different_amount",
        /// The hold was posted already.
        PendingTransferAlreadyPosted = 43 => "pending_transfer_already_posted",
        /// The hold was voided already.
        PendingTransferAlreadyVoided = 44 => "pending_transfer_already_voided",
        /// The hold's timeout has passed (swept or not yet).
        PendingTransferExpired = 45 => "pending_transfer_expired",
        /// `debits_pending` of the debit account would pass `u128::MAX`.
        OverflowsDebitsPending = 46 => "overflows_debits_pending",
        /// `credits_pending` of the credit account would pass `u128::MAX`.
        OverflowsCreditsPending = 47 => "overflows_credits_pending",
        /// `debits_posted` of the debit account would pass `u128::MAX`.
        OverflowsDebitsPosted = 48 => "overflows_debits_posted",
        /// `credits_posted` of the credit account would pass `u128::MAX`.
        OverflowsCreditsPosted = 49 => "overflows_credits_posted",
        /// `debits_pending + debits_posted` of the debit account would pass `u128::MAX`.
        OverflowsDebits = 50 => "overflows_debits",
        /// `credits_pending + credits_posted` of the credit account would pass `u128::MAX`.
        OverflowsCredits = 51 => "overflows_credits",
        /// The hold's deadline (timestamp + timeout) would pass `u64::MAX` nanoseconds.
        OverflowsTimeout = 52 => "overflows_timeout",
        /// The debit account has `debits_must_not_exceed_credits` and
        /// `debits_pending + debits_posted + amount > credits_posted`.
        ExceedsCredits = 53 => "exceeds_credits",
        /// The credit account has `credits_must_not_exceed_debits` and
        /// `credits_pending + credits_posted + amount > debits_posted`.
        ExceedsDebits = 54 => "exceeds_debits",
    }
}
