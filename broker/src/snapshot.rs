//! Snapshot files: a stream's [`StreamState`] as of a log index, written atomically.
//!
//! Layout: `"TXPSNAP1"`, `applied_next: u64 LE` (the first log index *not* reflected in the
//! state), `body_len: u64 LE`, the body ([`StreamState::encode`]), `crc32c: u32 LE` of
//! everything before it. Written to `snapshot.bin.tmp`, fsynced, renamed over `snapshot.bin`,
//! then the directory is fsynced, so a crash leaves either the old or the new snapshot.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::state::StreamState;

const MAGIC: &[u8; 8] = b"TXPSNAP1";
/// File name of a stream's snapshot inside its directory.
pub const FILE_NAME: &str = "snapshot.bin";

/// Encodes a snapshot file body.
pub fn encode(applied_next: u64, state_body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(state_body.len() + 28);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&applied_next.to_le_bytes());
    out.extend_from_slice(&(state_body.len() as u64).to_le_bytes());
    out.extend_from_slice(state_body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Writes `bytes` as `dir/snapshot.bin` atomically (tmp file, fsync, rename, directory fsync).
pub fn write_atomic(dir: &Path, bytes: &[u8]) -> Result<()> {
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
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
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))?;
    Ok(())
}

/// Reads `dir/snapshot.bin`: `Ok(None)` when there is none, else `(applied_next, state)`.
///
/// Errors: [`Error::Snapshot`] when the file exists but is unreadable, truncated or fails its
/// CRC (a snapshot is written atomically, so this is corruption, not a torn write).
pub fn read(dir: &Path) -> Result<Option<(u64, StreamState)>> {
    let path: PathBuf = dir.join(FILE_NAME);
    let bad = |reason: String| Error::Snapshot {
        path: path.clone(),
        reason,
    };
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    if data.len() < 28 || &data[..8] != MAGIC {
        return Err(bad("not a txpipe snapshot (bad magic or too short)".into()));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != want {
        return Err(bad("CRC mismatch".into()));
    }
    let applied_next = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(body[16..24].try_into().expect("8 bytes")) as usize;
    if body.len() != 24 + len {
        return Err(bad(format!(
            "body length {len} does not match file size {}",
            data.len()
        )));
    }
    let state = StreamState::decode(Bytes::copy_from_slice(&body[24..])).map_err(bad)?;
    Ok(Some((applied_next, state)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Retention, StreamSpec};

    #[test]
    fn snapshot_files_round_trip_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        let spec = StreamSpec {
            name: "s".into(),
            retention: Retention::WorkQueue,
            dedupe_by_key: false,
            group: "g".into(),
            dead_letter_stream: None,
        };
        let state = StreamState::new(&spec);
        write_atomic(dir.path(), &encode(17, &state.encode())).unwrap();
        let (next, got) = read(dir.path()).unwrap().unwrap();
        assert_eq!(next, 17);
        assert_eq!(got, state);
        let p = dir.path().join(FILE_NAME);
        let mut d = fs::read(&p).unwrap();
        d[20] ^= 1;
        fs::write(&p, d).unwrap();
        assert!(read(dir.path()).unwrap_err().to_string().contains("CRC"));
    }
}
