//! Self-repair of a replica whose storage is damaged (issue 12).
//!
//! At start-up the broker recovers every stream's storage before it starts Raft
//! ([`crate::broker::Broker::open_storage`]). When that finds damage that no crash leaves
//! behind ([`Error::is_corruption`]: a bad frame before the log's tail, an undecodable entry, an
//! unreadable snapshot, a log that does not hold the snapshot's records), what happens depends
//! on the cluster:
//!
//! - **Replicated** (`--peers` lists more than one node) and `--self-repair` (the default): the
//!   node's data (every stream directory and its identity file `node.json`) is moved into
//!   `<data-dir>/quarantine/<unix ms>/` (an earlier quarantine is deleted first, so at most one
//!   copy of the old data is kept; inspect or delete it by hand), and the node starts with an
//!   empty volume: it joins the cluster under a **new node id**, catches up from the leader
//!   (by install-snapshot) and replaces its old identity in every group, exactly as when a
//!   volume is deleted (docs/operations.md). It does not keep its old id with an empty log:
//!   entries it acknowledged under that id would be missing while the leader counts them,
//!   and a vote from it could then elect a leader without them.
//! - **Single replica**, or `--self-repair=false`: the broker refuses to start and says why;
//!   the volume is the only copy.
//!
//! The repair is logged at ERROR with the damage found, and counted in
//! `txpipe_broker_self_repairs_total`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Directory under the data directory that holds the quarantined data of the last repair.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Moves the node's data (everything in `data_dir` but the lock file and the quarantine) into
/// `data_dir/quarantine/<unix_ms>/`, after deleting an earlier quarantine; returns the new
/// quarantine directory. Every step is a rename or a delete followed by a directory fsync, so
/// a crash in the middle leaves either old data still in place (repaired again at the next
/// start, which finds the same damage) or a volume with no identity (which joins as new).
///
/// Errors: [`Error::Io`] naming the path.
pub fn quarantine(data_dir: &Path, unix_ms: u64) -> Result<PathBuf> {
    let io = |p: &Path, e: std::io::Error| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("quarantine of {}: {e}", p.display()),
        ))
    };
    let sync = |p: &Path| crate::snapshot::sync_dir(p).map_err(|e| io(p, e));
    let q = data_dir.join(QUARANTINE_DIR);
    crate::snapshot::remove_dir_all_if_exists(&q).map_err(|e| io(&q, e))?;
    let dest = q.join(unix_ms.to_string());
    std::fs::create_dir_all(&dest).map_err(|e| io(&dest, e))?;
    sync(data_dir)?;
    // The identity first: from here on the node joins as new, whatever else is moved.
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(data_dir)
        .map_err(|e| io(data_dir, e))?
        .map(|e| e.map(|e| e.file_name()).map_err(|e| io(data_dir, e)))
        .collect::<Result<_>>()?;
    names.retain(|n| n != QUARANTINE_DIR && n != crate::datadir::LOCK_FILE);
    names.sort_by_key(|n| n != crate::raft::cluster::IDENTITY_FILE);
    for name in names {
        let from = data_dir.join(&name);
        std::fs::rename(&from, dest.join(&name)).map_err(|e| io(&from, e))?;
        sync(data_dir)?;
    }
    sync(&dest)?;
    Ok(dest)
}

/// Acts on a storage recovery error `err` at start-up: `Ok(())` when the node's data was
/// quarantined and it must start as an empty node (see the module docs), else the error to
/// stop with.
///
/// Errors: `err` itself when it is not corruption; [`Error::Config`] with `err` and a way out
/// for a single replica or when self-repair is off; [`Error::Io`] when the quarantine fails.
pub fn decide(err: Error, data_dir: &Path, replicated: bool, self_repair: bool) -> Result<()> {
    if !err.is_corruption() {
        return Err(err);
    }
    if !replicated {
        return Err(Error::Config(format!(
            "{err}. This is the only replica, so the broker will not discard the damaged data: \
             restore the volume from a backup, or move the damaged stream directory under {} \
             aside to start that stream empty (its data is then lost)",
            data_dir.join("streams").display()
        )));
    }
    if !self_repair {
        return Err(Error::Config(format!(
            "{err}. --self-repair is off: delete this replica's volume (it then joins under a \
             new id and re-syncs from the leader), or restart with --self-repair=true"
        )));
    }
    let now = crate::broker::unix_ms();
    let dest = quarantine(data_dir, now)?;
    tracing::error!(error = %err, quarantine = %dest.display(),
        "storage damaged: this replica's data was moved to the quarantine and it re-joins the cluster under a new node id to re-sync from the leader");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_moves_everything_but_the_lock_and_keeps_one_copy() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir_all(d.join("streams/decisions/log")).unwrap();
        std::fs::write(d.join("streams/decisions/log/0.log"), "x").unwrap();
        std::fs::write(d.join(crate::raft::cluster::IDENTITY_FILE), "{}").unwrap();
        std::fs::write(d.join(crate::datadir::LOCK_FILE), "").unwrap();
        let first = quarantine(d, 1).unwrap();
        assert!(first.join("streams/decisions/log/0.log").exists());
        assert!(first.join(crate::raft::cluster::IDENTITY_FILE).exists());
        assert!(d.join(crate::datadir::LOCK_FILE).exists());
        assert!(!d.join("streams").exists());
        assert!(!d.join(crate::raft::cluster::IDENTITY_FILE).exists());
        // A second repair replaces the first quarantine.
        std::fs::create_dir_all(d.join("streams")).unwrap();
        let second = quarantine(d, 2).unwrap();
        assert!(second.join("streams").exists());
        assert!(!first.exists());
    }

    #[test]
    fn only_corruption_of_a_replicated_node_is_repaired() {
        let t = tempfile::tempdir().unwrap();
        let corrupt = || Error::Decode {
            index: 7,
            reason: "bad".into(),
        };
        let e = decide(corrupt(), t.path(), false, true).unwrap_err();
        assert!(e.to_string().contains("only replica"), "{e}");
        let e = decide(corrupt(), t.path(), true, false).unwrap_err();
        assert!(e.to_string().contains("--self-repair is off"), "{e}");
        let e = decide(
            Error::Io(std::io::Error::other("disk gone")),
            t.path(),
            true,
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("disk gone"), "{e}");
        decide(corrupt(), t.path(), true, true).unwrap();
        assert!(t.path().join(QUARANTINE_DIR).exists());
    }
}
