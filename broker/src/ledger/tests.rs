//! Table-driven unit tests of the ledger state machine.
