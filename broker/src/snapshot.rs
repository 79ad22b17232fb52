//! Snapshot files: a stream's [`StreamState`] as of a Raft log id, written atomically, and the
//! small Raft metadata files (vote, purged log id, committed log id) kept beside the log.
//!
//! Snapshot layout: `"TXPSNAP3"`, `meta_len: u32 LE`, meta (JSON of [`SnapMeta`]),
//! `body_len: u64 LE`, the body ([`StreamState::encode`]), `crc32c: u32 LE` of everything
//! before it. Format 3 (`"TXPSNAP3"`) holds the producer registrations (issue 12) and only
//! the key-dedupe window counters: the keys are in the stream's dedupe index
//! ([`crate::dedupe`]). Format 2 (`"TXPSNAP2"`: no registrations, keys in the body) still
//! loads ([`StreamState::decode_v2`]); its keys are migrated into the index when the stream
//! opens. New snapshots are always written as format 3. Every file here is written to `<name>.tmp`, fsynced, renamed over `<name>`, then
//! the directory is fsynced, so a crash leaves either the old or the new file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::raft::SnapshotMeta;
use crate::state::StreamState;

const MAGIC: &[u8; 8] = b"TXPSNAP3";
const MAGIC_V2: &[u8; 8] = b"TXPSNAP2";
/// Snapshot format written (the last byte of the magic).
pub const FORMAT: u8 = 3;
/// File name of a stream's snapshot inside its directory.
pub const FILE_NAME: &str = "snapshot.bin";

/// What a snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapMeta {
    /// openraft's metadata: last included log id and membership (0.10 dropped the snapshot id;
    /// files written by 0.9 carry one, which is ignored on read).
    pub meta: SnapshotMeta,
    /// First log index whose records the state still references (records of entries from
    /// here up to the snapshot's last index travel with the snapshot to a follower).
    pub records_from: u64,
}

impl SnapMeta {
    /// First log index not covered (`last_log_id.index + 1`, or 0).
    pub fn next_index(&self) -> u64 {
        self.meta.last_log_id.map_or(0, |l| l.index + 1)
    }
}

/// Encodes a snapshot file.
pub fn encode(meta: &SnapMeta, state_body: &[u8]) -> Vec<u8> {
    let m = serde_json::to_vec(meta).expect("snapshot meta serialises");
    let mut out = Vec::with_capacity(state_body.len() + m.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(m.len() as u32).to_le_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(&(state_body.len() as u64).to_le_bytes());
    out.extend_from_slice(state_body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a snapshot file's bytes.
///
/// Errors: a description when truncated, of another format, or failing its CRC.
pub fn decode(bytes: &[u8]) -> std::result::Result<(SnapMeta, StreamState), String> {
    if bytes.len() < 8 + 4 + 8 + 4 || (&bytes[..8] != MAGIC && &bytes[..8] != MAGIC_V2) {
        return Err(format!(
            "not a TXPSNAP3 (or TXPSNAP2) snapshot (bad magic {:?} or too short)",
            String::from_utf8_lossy(&bytes[..bytes.len().min(8)])
        ));
    }
    let format = if &bytes[..8] == MAGIC { FORMAT } else { 2 };
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != want {
        return Err("CRC mismatch".into());
    }
    let ml = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
    if body.len() < 12 + ml + 8 {
        return Err("meta length past the end".into());
    }
    let meta: SnapMeta =
        serde_json::from_slice(&body[12..12 + ml]).map_err(|e| format!("meta: {e}"))?;
    let at = 12 + ml;
    let bl = u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes")) as usize;
    if body.len() != at + 8 + bl {
        return Err("state length does not match the file size".into());
    }
    let state = StreamState::decode_format(Bytes::copy_from_slice(&body[at + 8..]), format)
        .map_err(|e| format!("state: {e}"))?;
    Ok((meta, state))
}

/// Writes `bytes` as `dir/name` atomically (tmp file, fsync, rename, directory fsync).
///
/// Errors: [`Error::Snapshot`] naming the file.
pub fn write_file_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let err = |p: &Path, e: std::io::Error| Error::Snapshot {
        path: p.to_path_buf(),
        reason: e.to_string(),
    };
    {
        let mut f = File::create(&tmp).map_err(|e| err(&tmp, e))?;
        f.write_all(bytes).map_err(|e| err(&tmp, e))?;
        f.sync_all().map_err(|e| err(&tmp, e))?;
    }
    fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
    sync_dir(dir).map_err(|e| err(dir, e))?;
    Ok(())
}

/// fsyncs directory `dir`, so that the names created, renamed or removed in it are durable.
///
/// Errors: the I/O error (callers name the path in their own error type).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes directory `path` with everything in it; a directory that is not there is not an
/// error (so a step that a crash interrupted can simply be run again).
///
/// Errors: the I/O error.
pub fn remove_dir_all_if_exists(path: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `bytes` as `dir/snapshot.bin` atomically.
pub fn write_atomic(dir: &Path, bytes: &[u8]) -> Result<()> {
    write_file_atomic(dir, FILE_NAME, bytes)
}

/// Reads `dir/snapshot.bin`: `Ok(None)` when there is none.
///
/// Errors: [`Error::Snapshot`] when the file exists but is unreadable, truncated or fails its
/// CRC (a snapshot is written atomically, so this is corruption, not a torn write).
pub fn read(dir: &Path) -> Result<Option<(SnapMeta, StreamState)>> {
    let path: PathBuf = dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Snapshot {
                path,
                reason: e.to_string(),
            });
        }
    };
    decode(&bytes)
        .map(Some)
        .map_err(|reason| Error::Snapshot { path, reason })
}

/// Reads a small JSON file written by [`write_json`]; `Ok(None)` when absent.
///
/// Errors: [`Error::Snapshot`] when unreadable or not valid JSON of `T`.
pub fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Result<Option<T>> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Snapshot {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Snapshot {
            path,
            reason: e.to_string(),
        }),
    }
}

/// Writes `value` as JSON to `dir/name` atomically and durably.
///
/// Errors: [`Error::Snapshot`] naming the file.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    let b = serde_json::to_vec(value).expect("serialisable");
    write_file_atomic(dir, name, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Retention, StreamSpec};

    #[test]
    fn snapshot_roundtrip_and_corruption() {
        let spec = StreamSpec {
            name: "s".into(),
            retention: Retention::Limits,
            dedupe_by_key: false,
            group: String::new(),
            dead_letter_stream: None,
            ledger: false,
        };
        let st = StreamState::new(&spec);
        let meta = SnapMeta {
            meta: SnapshotMeta {
                last_log_id: Some(crate::raft::log_id(3, 1, 9)),
                last_membership: Default::default(),
            },
            records_from: 4,
        };
        let b = encode(&meta, &st.encode());
        let (m, s) = decode(&b).unwrap();
        assert_eq!(m, meta);
        assert_eq!(m.next_index(), 10);
        assert_eq!(s, st);
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert!(decode(&bad).unwrap_err().contains("CRC"));
        assert!(decode(&b[..10]).is_err());
    }
}
