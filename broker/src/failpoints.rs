//! Crash points: named places in the storage code where a test can end the process, to check
//! that a crash at that exact instruction loses nothing acknowledged.
//!
//! [`crash_point!`](crate::crash_point) compiles to nothing unless the crate is built with the
//! `failpoints` feature (tests only: `cargo test -p txpipe-broker --features failpoints`). With
//! it, the [`fail`] crate reads `FAILPOINTS` at start-up ([`setup`], called by the binary):
//! `FAILPOINTS='retention::after_trim=return'` makes the process exit with status
//! [`CRASH_EXIT_CODE`] the first time it reaches that point, without running destructors,
//! flushing buffers or writing a final snapshot, as kill -9 would (the page cache survives, as
//! it does when a container is killed; power loss is not modelled).
//!
//! The points (each is listed in docs/architecture.md with what a crash there leaves behind):
//! see [`POINTS`].

/// Exit status of a process ended at a crash point.
pub const CRASH_EXIT_CODE: i32 = 86;

/// Every crash point in the broker, for tests that iterate over them.
pub const POINTS: &[&str] = &[
    "retention::after_trim",
    "retention::after_snapshot",
    "retention::mid_delete",
    "retention::after_delete",
    "log::roll_before_create",
    "log::roll_after_create",
    "install::after_stage",
    "install::after_marker",
    "install::mid_redo",
    "install::before_done",
    "bootstrap::after_identity",
    "snapshot::before_write",
    "snapshot::after_write",
];

/// Ends the process at crash point `name` (see the module docs).
pub fn crash(name: &str) -> ! {
    eprintln!("txpipe-broker: crash point {name} reached; exiting with status {CRASH_EXIT_CODE}");
    std::process::exit(CRASH_EXIT_CODE)
}

/// Crash point `name`: ends the process there when `FAILPOINTS` enables it (feature
/// `failpoints` only; otherwise nothing).
#[macro_export]
macro_rules! crash_point {
    ($name:expr) => {{
        #[cfg(feature = "failpoints")]
        if fail::eval($name, |_| ()).is_some() {
            $crate::failpoints::crash($name);
        }
    }};
}

/// Reads `FAILPOINTS` (feature `failpoints`); returns a guard to keep for the process's life.
#[cfg(feature = "failpoints")]
pub fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}
