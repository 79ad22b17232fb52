//! txpipe producer: deterministic transaction generator and publisher.
//!
//! - [`generate`]: the seeded generator of realistic, labelled card transactions
//!   ([`generate::Generator`], [`generate::SCENARIOS`]), modelled on the Fraud Detection
//!   Handbook's simulator and Sparkov.
//! - [`tables`]: countries, BIN → issuing country, MCCs, Luhn — reference data the workers'
//!   risk tables can share.
//! - [`rng`]: the generator's own PRNG (xoshiro256** seeded by SplitMix64) and samplers.
//! - [`input`]: CSV and JSON Lines input with a documented schema and line-numbered bad rows.
//! - [`features`]: pre-featurised CSV input (the ULB credit-card data as published):
//!   `Transaction.features` + `feature_set` fingerprint, labels from a `Class` column.
//! - [`ratelimit`]: token bucket with an injected clock.
//! - [`publish`]: [`run`] — batches, paces and sends `transactions` and `labels` through two
//!   idempotent producers, and returns a [`Summary`].
//!
//! The `txpipe-producer` binary (src/main.rs) parses flags and calls [`run`].

pub mod features;
pub mod generate;
pub mod input;
pub mod publish;
pub mod ratelimit;
pub mod rng;
pub mod tables;

pub use publish::{Config, Error, OnBadRow, ProgressMode, Result, Source, Summary, run};
