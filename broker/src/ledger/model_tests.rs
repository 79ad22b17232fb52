//! The ledger state machine against a simple reference model (proptest).
