//! Staged, redo-able snapshot install (issue 12): the files a follower receives from the leader
//! replace its log, snapshot and dedupe index only once all of them are durable beside the
//! live ones, and a crash at any instruction leaves either the old stream (install not decided)
//! or a decided install that start-up finishes.
//!
//! The steps, in a stream directory `<dir>` (crash points in brackets, see
//! [`crate::failpoints`]):
//!
//! 1. **Stage**: [`begin`] creates an empty `<dir>/install/` (removing a leftover one); the
//!    caller writes there the new log (`install/log/`, synced), `install/snapshot.bin` and, for a
//!    stream that deduplicates by key, `install/dedupe.redb`. Nothing live is touched: a
//!    transfer that fails its checks, or a crash, leaves the stream as it was, and [`abort`] (or
//!    the next start's [`recover`]) removes the staging directory. \[`install::after_stage`\]
//! 2. **Decide**: [`commit`] fsyncs the staging directory and writes the redo marker
//!    `<dir>/install.redo` (the snapshot's last log id, JSON) atomically: tmp file, fsync,
//!    rename, directory fsync. From here on the install happens. \[`install::after_marker`\]
//! 3. **Redo** ([`redo`], idempotent, also run by [`recover`] at start-up): remove the live
//!    `log/` and rename `install/log` in its place \[`install::mid_redo`, between the two\];
//!    rename the staged dedupe index, then the staged snapshot over the live ones; write
//!    `raft/purged.json` (the snapshot's last log id) \[`install::before_done`\]; remove the
//!    staging directory and then the marker. Each step checks what is still to do (a staged file
//!    that is gone was already moved), so a crash in the middle of a redo is finished by the next
//!    one.
//!
//! Before this, an install reset the live log before the new snapshot was durable: a transfer
//! that failed half-way, or a crash, left a log that started after the old snapshot's records,
//! and start-up discarded log and snapshot together.

use std::path::{Path, PathBuf};

use super::LogId;
use crate::Result;
use crate::snapshot;

/// Staging directory of an install, inside the stream directory.
pub const STAGE_DIR: &str = "install";
/// Redo marker: exists once a staged install is decided; holds the snapshot's last log id.
pub const MARKER: &str = "install.redo";
/// The stream's log directory (as [`crate::replica::Replica::open`] names it).
pub const LOG_DIR: &str = "log";
/// Raft metadata directory and the purge-point file in it (see [`super::store`]).
const RAFT_DIR: &str = "raft";
const PURGED_FILE: &str = "purged.json";

fn io(path: &Path, e: std::io::Error) -> crate::Error {
    crate::Error::Snapshot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    snapshot::sync_dir(dir).map_err(|e| io(dir, e))
}

fn remove_dir_if_there(path: &Path) -> Result<()> {
    snapshot::remove_dir_all_if_exists(path).map_err(|e| io(path, e))
}

/// Step 1: an empty staging directory `<dir>/install/` (a leftover one is removed first).
///
/// Errors: [`crate::Error::Snapshot`] naming the directory.
pub fn begin(dir: &Path) -> Result<PathBuf> {
    let stage = dir.join(STAGE_DIR);
    remove_dir_if_there(&stage)?;
    std::fs::create_dir_all(&stage).map_err(|e| io(&stage, e))?;
    Ok(stage)
}

/// Gives up a staged install that was not decided: removes `<dir>/install/`. The live stream
/// was never touched. Errors are only logged (the next [`recover`] removes it again).
pub fn abort(dir: &Path) {
    let stage = dir.join(STAGE_DIR);
    if let Err(e) = remove_dir_if_there(&stage).and_then(|()| sync_dir(dir)) {
        tracing::warn!(dir = %stage.display(), error = %e, "could not remove the staging directory of a failed snapshot install");
    }
}

/// Step 2: makes the staged files durable and decides the install by writing the redo marker
/// with the snapshot's last log id `last`.
///
/// Errors: [`crate::Error::Snapshot`] naming the file or directory.
pub fn commit(dir: &Path, last: Option<LogId>) -> Result<()> {
    let stage = dir.join(STAGE_DIR);
    sync_dir(&stage)?;
    crate::crash_point!("install::after_stage");
    snapshot::write_json(dir, MARKER, &last)?;
    crate::crash_point!("install::after_marker");
    Ok(())
}

/// Step 3: applies a decided install (one whose marker exists) to the files of `<dir>`;
/// returns whether there was one. Idempotent: safe to run again after a crash at any point
/// inside it. The caller must hold no open handle it still writes through on the live log.
///
/// Errors: [`crate::Error::Snapshot`] naming the file; the marker stays, so the next start
/// tries again.
pub fn redo(dir: &Path) -> Result<bool> {
    let Some(last) = snapshot::read_json::<Option<LogId>>(dir, MARKER)? else {
        return Ok(false);
    };
    let stage = dir.join(STAGE_DIR);
    let staged_log = stage.join(LOG_DIR);
    let live_log = dir.join(LOG_DIR);
    if staged_log.exists() {
        remove_dir_if_there(&live_log)?;
        crate::crash_point!("install::mid_redo");
        std::fs::rename(&staged_log, &live_log).map_err(|e| io(&live_log, e))?;
        sync_dir(&stage)?;
        sync_dir(dir)?;
    }
    // The dedupe index before the snapshot: the index is never behind the snapshot.
    for name in [crate::dedupe::FILE_NAME, snapshot::FILE_NAME] {
        let staged = stage.join(name);
        if staged.exists() {
            let live = dir.join(name);
            std::fs::rename(&staged, &live).map_err(|e| io(&live, e))?;
            sync_dir(dir)?;
        }
    }
    let raft_dir = dir.join(RAFT_DIR);
    std::fs::create_dir_all(&raft_dir).map_err(|e| io(&raft_dir, e))?;
    snapshot::write_json(&raft_dir, PURGED_FILE, &last)?;
    crate::crash_point!("install::before_done");
    remove_dir_if_there(&stage)?;
    sync_dir(dir)?;
    let marker = dir.join(MARKER);
    std::fs::remove_file(&marker).map_err(|e| io(&marker, e))?;
    sync_dir(dir)?;
    Ok(true)
}

/// At start-up, before the log is opened: finishes a decided install ([`redo`]) or removes the
/// staging directory of one that was not decided.
///
/// Errors: as [`redo`].
pub fn recover(dir: &Path) -> Result<()> {
    if dir.join(MARKER).exists() {
        redo(dir)?;
        tracing::warn!(dir = %dir.display(), "finished a snapshot install interrupted by a crash");
    } else if dir.join(STAGE_DIR).exists() {
        remove_dir_if_there(&dir.join(STAGE_DIR))?;
        sync_dir(dir)?;
        tracing::warn!(dir = %dir.display(), "removed the staged files of a snapshot install that a crash interrupted before it was decided; the stream is as it was before");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    fn read(p: &Path) -> Option<String> {
        std::fs::read_to_string(p).ok()
    }

    /// A stream directory with a live log, snapshot and index ("old"), and a staged install
    /// ("new") decided by its marker.
    fn decided(dir: &Path) {
        write(&dir.join("log/00000000000000000000.log"), "old log");
        write(&dir.join(snapshot::FILE_NAME), "old snap");
        write(&dir.join(crate::dedupe::FILE_NAME), "old index");
        let stage = begin(dir).unwrap();
        write(&stage.join("log/00000000000000000007.log"), "new log");
        write(&stage.join(snapshot::FILE_NAME), "new snap");
        write(&stage.join(crate::dedupe::FILE_NAME), "new index");
        commit(dir, Some(crate::raft::log_id(2, 1, 9))).unwrap();
    }

    fn assert_new(dir: &Path) {
        assert_eq!(
            read(&dir.join("log/00000000000000000007.log")).as_deref(),
            Some("new log")
        );
        assert!(!dir.join("log/00000000000000000000.log").exists());
        assert_eq!(
            read(&dir.join(snapshot::FILE_NAME)).as_deref(),
            Some("new snap")
        );
        assert_eq!(
            read(&dir.join(crate::dedupe::FILE_NAME)).as_deref(),
            Some("new index")
        );
        let purged: Option<Option<LogId>> =
            snapshot::read_json(&dir.join(RAFT_DIR), PURGED_FILE).unwrap();
        assert_eq!(purged, Some(Some(crate::raft::log_id(2, 1, 9))));
        assert!(!dir.join(STAGE_DIR).exists());
        assert!(!dir.join(MARKER).exists());
    }

    #[test]
    fn a_decided_install_is_applied_by_recover() {
        let t = tempfile::tempdir().unwrap();
        decided(t.path());
        recover(t.path()).unwrap();
        assert_new(t.path());
        // Nothing left to do: a second recover changes nothing.
        recover(t.path()).unwrap();
        assert_new(t.path());
    }

    #[test]
    fn a_redo_interrupted_at_each_step_is_finished_by_the_next_one() {
        // Simulate a crash after each file-system step of `redo` by performing the steps by
        // hand up to that point, then running `recover`.
        for step in 0..6 {
            let t = tempfile::tempdir().unwrap();
            let dir = t.path();
            decided(dir);
            let stage = dir.join(STAGE_DIR);
            if step >= 1 {
                std::fs::remove_dir_all(dir.join(LOG_DIR)).unwrap();
            }
            if step >= 2 {
                std::fs::rename(stage.join(LOG_DIR), dir.join(LOG_DIR)).unwrap();
            }
            if step >= 3 {
                std::fs::rename(
                    stage.join(crate::dedupe::FILE_NAME),
                    dir.join(crate::dedupe::FILE_NAME),
                )
                .unwrap();
            }
            if step >= 4 {
                std::fs::rename(
                    stage.join(snapshot::FILE_NAME),
                    dir.join(snapshot::FILE_NAME),
                )
                .unwrap();
            }
            if step >= 5 {
                std::fs::remove_dir_all(&stage).unwrap();
            }
            recover(dir).unwrap();
            assert_new(dir);
        }
    }

    #[test]
    fn an_undecided_install_leaves_the_stream_as_it_was() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        write(&dir.join("log/00000000000000000000.log"), "old log");
        write(&dir.join(snapshot::FILE_NAME), "old snap");
        let stage = begin(dir).unwrap();
        write(&stage.join("log/00000000000000000007.log"), "new log");
        write(&stage.join(snapshot::FILE_NAME), "new snap");
        recover(dir).unwrap();
        assert_eq!(
            read(&dir.join("log/00000000000000000000.log")).as_deref(),
            Some("old log")
        );
        assert_eq!(
            read(&dir.join(snapshot::FILE_NAME)).as_deref(),
            Some("old snap")
        );
        assert!(!dir.join(STAGE_DIR).exists());
        // And abort does the same for an install that failed while running.
        let stage = begin(dir).unwrap();
        write(&stage.join(snapshot::FILE_NAME), "new snap");
        abort(dir);
        assert!(!dir.join(STAGE_DIR).exists());
        assert_eq!(
            read(&dir.join(snapshot::FILE_NAME)).as_deref(),
            Some("old snap")
        );
    }
}
