//! Fuzz target `snapshot`: `txpipe_broker::fuzz_checks::snapshot` on every input (what it checks:
//! docs/fuzzing.md).
#![no_main]

use txpipe_fuzz as _; // the allocation cap

libfuzzer_sys::fuzz_target!(|data: &[u8]| txpipe_broker::fuzz_checks::snapshot(data));
