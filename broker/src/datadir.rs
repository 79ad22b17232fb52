//! One broker per volume: an exclusive lock on the data directory.
//!
//! Two broker processes on one data directory (a mis-mounted volume, a second container in
//! the pod, a local run started twice) would both append to the same segment files and
//! overwrite each other's acknowledged records. [`DataDirLock::acquire`] takes an exclusive,
//! non-blocking `flock(2)` on `<data_dir>/broker.lock` (through [`std::fs::File::try_lock`])
//! for the life of the process and writes the holder's pid into it; a second process fails at
//! once with an error naming that pid. The kernel drops the lock when the holder exits, however
//! it exits (kill -9 included), so a stale lock file never blocks a restart.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File name of the lock inside the data directory.
pub const LOCK_FILE: &str = "broker.lock";

/// Holds the exclusive lock on a data directory until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `data_dir` if needed and locks it exclusively for this process.
    ///
    /// Errors: [`Error::Config`] when another process holds the lock (the message names its
    /// pid, as written in the lock file), [`Error::Io`] when the directory or file cannot be
    /// created or locked for another reason.
    pub fn acquire(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot create data directory {}: {e}", data_dir.display()),
            ))
        })?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot open {}: {e}", path.display()),
                ))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "unknown pid".to_string()
                } else {
                    format!("pid {holder}")
                };
                return Err(Error::Config(format!(
                    "data directory {} is in use by another broker ({holder}, lock file {}); \
                     two brokers on one volume would overwrite each other's records: stop the \
                     other process or give this one its own --data-dir",
                    data_dir.display(),
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot lock {}: {e}", path.display()),
                )));
            }
        }
        // Informational only (the lock is what excludes): who holds it.
        let pid = std::process::id().to_string();
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the pid in the lock file");
        }
        Ok(Self { _file: file, path })
    }

    /// Path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description, so a second open in the same
        // process conflicts exactly as a second process would.
        let err = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another broker"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again once the holder is gone");
    }
}
