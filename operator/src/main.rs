//! `txpipe-operator` binary (being written).
fn main() {}
