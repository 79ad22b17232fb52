//! Checks of every decoder that reads bytes from disk or from a peer, shared by the fuzz
//! targets (`fuzz/`, libFuzzer through cargo-fuzz) and the corpus regression test
//! (`broker/tests/fuzz_corpus.rs`), so that an input once found to crash stays fixed without
//! the fuzzer. See docs/fuzzing.md.
//!
//! Each check takes arbitrary bytes and panics only when a property fails (a panic inside a
//! decoder is a failure too). Every check does two things with its input:
//!
//! - **decode**: the bytes go to the decoder as they are; a successful decode must re-encode
//!   to something that decodes to the same value (for the fixed-width binary encodings, to
//!   the very same bytes);
//! - **build**: the bytes drive a [`Gen`] that builds a valid value (commands, a state reached
//!   by applying commands, an entry, a snapshot, a log with a mutation, a transfer file, a
//!   peer message); its encoding must decode back to it, or, for the log and the transfer,
//!   recovery must give exactly what the written data and the documented rules say.
//!
//! [`TARGETS`] lists the checks by target name (the names of `fuzz/fuzz_targets/*.rs` and of
//! `fuzz/corpus/<target>/`); [`seeds`] produces the committed seed corpus.
//!
//! Not part of the broker's API: hidden from the docs and free to change with the decoders.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use openraft::error::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Entry, EntryPayload};
use prost::Message;
use txpipe_client::broker::v1::Record;

use crate::command::Command;
use crate::log::frame::{Decoded, decode_frame};
use crate::log::{LogConfig, SegmentedLog};
use crate::raft::network::SnapshotChunk;
use crate::raft::peer::{RaftReply, RaftRequest, decode_request};
use crate::raft::{
    EntryData, LogId, Membership, Node, NodeId, RaftEntry, SnapshotMeta, StoredMembership,
    TypeConfig, Vote, decode_commands, decode_entry, decode_log_id, encode_commands, encode_entry,
    log_id,
};
use crate::snapshot::{self, SnapMeta};
use crate::state::{Retention, StreamSpec, StreamState};

/// A check: panics when a property fails for this input.
pub type Check = fn(&[u8]);

/// Every fuzz target: `(name, check)`. The name is the file `fuzz/fuzz_targets/<name>.rs` and
/// the directories `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/`.
pub const TARGETS: &[(&str, Check)] = &[
    ("command", command),
    ("entry", entry),
    ("state", state),
    ("snapshot", snapshot),
    ("transfer", transfer),
    ("segment", segment),
    ("peer_request", peer_request),
    ("peer_reply", peer_reply),
];

/// Builds values from fuzzer bytes: each call takes the next bytes of the input, and reads
/// zeros once the input is used up (so every input builds something, and short inputs build
/// small values).
pub struct Gen<'a> {
    data: &'a [u8],
}

impl<'a> Gen<'a> {
    /// A generator over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let h = self.take(N);
        b[..h.len()].copy_from_slice(h);
        b
    }
    /// Next byte.
    pub fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }
    /// Next 4 bytes, little endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }
    /// Next 8 bytes, little endian.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }
    /// A small number in `0..n` (one byte).
    pub fn below(&mut self, n: u8) -> usize {
        usize::from(self.u8() % n.max(1))
    }
    /// A byte string of at most `max` bytes (its length is the next byte).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u8()).min(max);
        self.take(n)
    }
    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }
}

// ---------------------------------------------------------------------------------------------
// Builders of valid values.

fn gen_record(g: &mut Gen) -> Record {
    Record {
        timestamp_us: g.u64() as i64,
        key: Bytes::copy_from_slice(g.bytes(24)),
        value: Bytes::copy_from_slice(g.bytes(48)),
    }
}

/// A command of any kind with arbitrary fields.
pub fn gen_command(g: &mut Gen) -> Command {
    match g.below(6) {
        0 => Command::Append {
            producer_id: g.u64(),
            epoch: g.u64(),
            sequence: g.u64(),
            position: g.u64(),
            records: (0..g.below(6)).map(|_| gen_record(g)).collect(),
        },
        5 => Command::InitProducer {
            name: String::from_utf8_lossy(g.bytes(16)).into_owned(),
        },
        1 => Command::Ack {
            offsets: (0..g.below(12)).map(|_| g.u64()).collect(),
        },
        2 => Command::Attempts {
            entries: (0..g.below(8)).map(|_| (g.u64(), g.u32())).collect(),
        },
        3 => Command::DeadLettered {
            offsets: (0..g.below(8)).map(|_| g.u64()).collect(),
            reason: String::from_utf8_lossy(g.bytes(40)).into_owned(),
        },
        _ => Command::Trim {
            start_offset: g.u64(),
        },
    }
}

/// A command of the kinds a stream actually sees, with small offsets and producer ids so that
/// applying a sequence of them reaches interesting states (retries, dedupe, acks, trims).
fn gen_plausible_command(g: &mut Gen) -> Command {
    let small = |g: &mut Gen| u64::from(g.u8() % 64);
    match g.below(9) {
        8 => Command::InitProducer {
            name: format!("p{}", g.u8() % 3),
        },
        0..=3 => Command::Append {
            producer_id: u64::from(g.u8() % 4),
            epoch: u64::from(g.u8() % 3),
            sequence: u64::from(g.u8() % 6),
            position: u64::from(g.u8() % 8),
            records: (0..g.below(5))
                .map(|_| Record {
                    timestamp_us: 1,
                    key: Bytes::copy_from_slice(g.bytes(2)),
                    value: Bytes::from_static(b"v"),
                })
                .collect(),
        },
        4 => Command::Ack {
            offsets: (0..g.below(6)).map(|_| small(g)).collect(),
        },
        5 => Command::Attempts {
            entries: (0..g.below(4)).map(|_| (small(g), g.u32() % 9)).collect(),
        },
        6 => Command::DeadLettered {
            offsets: (0..g.below(4)).map(|_| small(g)).collect(),
            reason: "r".into(),
        },
        _ => Command::Trim {
            start_offset: small(g),
        },
    }
}

fn gen_spec(g: &mut Gen) -> StreamSpec {
    let flags = g.u8();
    StreamSpec {
        name: "s".into(),
        retention: if flags & 1 != 0 {
            Retention::WorkQueue
        } else {
            Retention::Limits
        },
        dedupe_by_key: flags & 2 != 0,
        group: "g".into(),
        dead_letter_stream: None,
        // Not generated: the committed seed corpus would change. A ledger shard's snapshot
        // body is covered by the unit tests of `crate::state`.
        ledger: false,
    }
}

/// A state reached by applying up to 32 plausible commands to an empty stream.
pub fn gen_state(g: &mut Gen) -> StreamState {
    let mut s = StreamState::new(&gen_spec(g));
    for i in 0..g.below(32) {
        let c = gen_plausible_command(g);
        s.apply(i as u64 + 1, &c);
    }
    s
}

fn gen_log_id(g: &mut Gen) -> LogId {
    log_id(u64::from(g.u8()), u64::from(g.u8() % 5), g.u64() >> 8)
}

fn gen_membership(g: &mut Gen) -> Membership {
    let ids: BTreeSet<NodeId> = (0..1 + g.below(4)).map(|_| u64::from(g.u8() % 8)).collect();
    let nodes: BTreeMap<NodeId, Node> = ids
        .iter()
        .map(|&id| {
            (
                id,
                Node {
                    addr: String::from_utf8_lossy(g.bytes(12)).into_owned(),
                    peer_addr: format!("n{id}:7001"),
                },
            )
        })
        .collect();
    Membership::new(vec![ids], nodes).expect("every voter has a node")
}

fn gen_payload(g: &mut Gen) -> EntryPayload<EntryData, NodeId, Node> {
    match g.below(4) {
        0 => EntryPayload::Blank,
        1 => EntryPayload::Membership(gen_membership(g)),
        _ => EntryPayload::Normal(EntryData {
            cmds: (0..g.below(4)).map(|_| gen_command(g)).collect(),
        }),
    }
}

/// A Raft entry at `index` (any payload).
fn gen_entry(g: &mut Gen, index: u64) -> RaftEntry {
    let mut log_id = gen_log_id(g);
    log_id.index = index;
    Entry {
        log_id,
        payload: gen_payload(g),
    }
}

fn gen_snap_meta(g: &mut Gen) -> SnapMeta {
    let last = gen_log_id(g);
    let last = (!g.u8().is_multiple_of(8)).then_some(last);
    SnapMeta {
        meta: SnapshotMeta {
            last_log_id: last,
            last_membership: StoredMembership::new(Some(gen_log_id(g)), gen_membership(g)),
        },
        records_from: g.u64() >> 8,
    }
}

fn gen_vote(g: &mut Gen) -> Vote {
    let (term, node) = (u64::from(g.u8()), u64::from(g.u8() % 5));
    if g.u8() & 1 != 0 {
        Vote::new_committed(term, node)
    } else {
        Vote::new(term, node)
    }
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// [`Command::decode`]: the encoding is canonical (fixed width, no trailing bytes), so a
/// decoded command re-encodes to the input (a legacy kind-1 `Append` re-encodes as kind 6 and
/// decodes again to the same command); a built command round-trips and its `encoded_len` is
/// exact.
pub fn command(data: &[u8]) {
    if let Ok(c) = Command::decode(Bytes::copy_from_slice(data)) {
        if data.get(1) == Some(&1) {
            // A legacy kind-1 `Append` is read only: it re-encodes as kind 6 (16 bytes longer,
            // epoch and position 0), which must decode to the same command.
            assert_eq!(
                Command::decode(c.encode()).as_ref(),
                Ok(&c),
                "legacy append"
            );
            assert_eq!(c.encoded_len(), data.len() + 16);
        } else {
            assert_eq!(&c.encode()[..], data, "re-encoding differs: {c:?}");
            assert_eq!(c.encoded_len(), data.len());
        }
    }
    let c = gen_command(&mut Gen::new(data));
    let b = c.encode();
    assert_eq!(b.len(), c.encoded_len(), "encoded_len of {c:?}");
    assert_eq!(Command::decode(b), Ok(c));
}

/// Whether a well-formed encoded command list (`[n u32]` then `n` × `[len u32][command]`, as
/// [`encode_commands`] writes it) holds a legacy kind-1 `Append`, which is read only and
/// re-encodes as kind 6 (so bytes differ while the command is the same).
fn has_legacy_append(list: &[u8]) -> bool {
    let Some(n) = list.get(..4) else {
        return false;
    };
    let n = u32::from_le_bytes(n.try_into().expect("4 bytes"));
    let mut rest = &list[4..];
    for _ in 0..n {
        let Some(len) = rest.get(..4) else {
            return false;
        };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(cmd) = rest.get(4..4 + len) else {
            return false;
        };
        if cmd.get(1) == Some(&1) {
            return true;
        }
        rest = &rest[4 + len..];
    }
    false
}

/// The log entry decoders: [`decode_log_id`], [`decode_entry`], [`decode_commands`] and the
/// serde form of [`EntryData`] inside peer messages. Blank and normal entries and command
/// lists re-encode to the input; a membership entry (JSON) decodes again to the same value;
/// a built entry round-trips.
pub fn entry(data: &[u8]) {
    let id = decode_log_id(data);
    if let Ok(e) = decode_entry(Bytes::copy_from_slice(data)) {
        assert_eq!(
            id,
            Ok(e.log_id),
            "decode_log_id disagrees with decode_entry"
        );
        let b = encode_entry(&e);
        if matches!(e.payload, EntryPayload::Membership(_))
            || (matches!(e.payload, EntryPayload::Normal(_)) && has_legacy_append(&data[26..]))
        {
            let again = decode_entry(b).expect("a re-encoded entry decodes");
            assert_eq!(format!("{again:?}"), format!("{e:?}"));
        } else {
            assert_eq!(&b[..], data, "re-encoding differs: {e:?}");
        }
    }
    if let Ok(cmds) = decode_commands(Bytes::copy_from_slice(data)) {
        let mut b = Vec::new();
        encode_commands(&mut b, &cmds);
        if has_legacy_append(data) {
            let again = decode_commands(Bytes::from(b)).expect("a re-encoded list decodes");
            assert_eq!(again, cmds, "re-encoding of a list with a legacy append");
        } else {
            assert_eq!(b, data, "re-encoding of the command list differs");
        }
    }
    if let Ok(d) = postcard::from_bytes::<EntryData>(data) {
        let b = postcard::to_allocvec(&d).expect("entry data serialises");
        assert_eq!(postcard::from_bytes::<EntryData>(&b).ok(), Some(d));
    }
    let mut g = Gen::new(data);
    let index = g.u64();
    let e = gen_entry(&mut g, index);
    let b = encode_entry(&e);
    assert_eq!(decode_log_id(&b), Ok(e.log_id));
    let back = decode_entry(b).expect("a built entry decodes");
    assert_eq!(format!("{back:?}"), format!("{e:?}"));
}

/// [`StreamState::decode`]: a decoded state decodes again from its encoding to the same state
/// (the key table's order in the encoding is not fixed, so bytes may differ); a state built
/// by applying arbitrary commands round-trips.
pub fn state(data: &[u8]) {
    if let Ok(s) = StreamState::decode(Bytes::copy_from_slice(data)) {
        let again = StreamState::decode(Bytes::from(s.encode())).expect("re-encoded state decodes");
        assert_eq!(again, s);
    }
    let s = gen_state(&mut Gen::new(data));
    let back = StreamState::decode(Bytes::from(s.encode())).expect("a built state decodes");
    assert_eq!(back, s);
}

/// [`snapshot::decode`] (the body of [`snapshot::read`]): on the input as it is, and once more
/// with a correct CRC appended (so that the fuzzer reaches the meta and state decoding behind
/// the CRC); a decoded snapshot re-encodes to one that decodes the same. A built snapshot
/// (arbitrary meta, state from applied commands) round-trips.
pub fn snapshot(data: &[u8]) {
    let mut fixed = data.to_vec();
    fixed.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    for input in [data, &fixed[..]] {
        if let Ok((meta, st)) = snapshot::decode(input) {
            let b = snapshot::encode(&meta, &st.encode());
            let (m2, s2) = snapshot::decode(&b).expect("a re-encoded snapshot decodes");
            assert_eq!((m2, s2), (meta, st));
        }
    }
    let mut g = Gen::new(data);
    let meta = gen_snap_meta(&mut g);
    let st = gen_state(&mut g);
    let b = snapshot::encode(&meta, &st.encode());
    assert_eq!(snapshot::decode(&b), Ok((meta, st)));
}

/// A directory under the system temp dir, removed on drop (no `tempfile` in the library).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(what: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "txpipe-fuzz-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch directory");
        Self(p)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn log_config(dir: &Path, segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 64,
        fsync: false,
        ..LogConfig::new(dir)
    }
}

fn read_all(log: &SegmentedLog) -> Vec<Vec<u8>> {
    (log.first_index()..log.next_index())
        .map(|i| log.read(i).expect("a recovered entry reads").to_vec())
        .collect()
}

/// What the recovery rules (module docs of [`crate::log`]) say opening `segments` (base index,
/// file bytes; sorted and contiguous) must give: the entries and the bytes cut from the last
/// segment, or `None` for an error (a bad frame in a sealed segment, or a bad frame in the
/// last one followed by a valid frame at a later byte offset).
fn recovery_oracle(segments: &[(u64, Vec<u8>)]) -> Option<(Vec<Vec<u8>>, u64)> {
    let mut out = Vec::new();
    let first = segments.first().map_or(0, |(base, _)| *base);
    for (i, (base, bytes)) in segments.iter().enumerate() {
        if *base != first + out.len() as u64 {
            return None; // a gap or an overlap between segments
        }
        let mut pos = 0;
        while pos < bytes.len() {
            match decode_frame(&bytes[pos..]) {
                Decoded::Frame {
                    payload,
                    frame_bytes,
                } => {
                    out.push(payload.to_vec());
                    pos += frame_bytes;
                }
                _ => break,
            }
        }
        if pos == bytes.len() {
            continue;
        }
        let valid_later = (pos + 1..bytes.len())
            .any(|o| matches!(decode_frame(&bytes[o..]), Decoded::Frame { .. }));
        if i + 1 < segments.len() || valid_later {
            return None;
        }
        return Some((out, (bytes.len() - pos) as u64));
    }
    Some((out, 0))
}

/// Segment recovery ([`SegmentedLog::open`]). Mode 0: the input is the whole (only) segment
/// file. Otherwise records built from the input are written with small segments, then one
/// segment file is mutated (a byte flipped, cut short, or garbage appended). Either way the
/// result of `open` must be what [`recovery_oracle`] derives from the files' bytes (a torn
/// tail truncated to the last valid frame, corruption before it an error), never a panic and
/// never other data; with a built log, the recovered entries must be a prefix of the written
/// ones, all of them when nothing was mutated or when the mutation only appended, and none
/// may be lost before a truncation point; a flipped byte in a sealed segment is an error. A
/// recovered log then takes one more entry and reopens with it at the end.
pub fn segment(data: &[u8]) {
    let dir = ScratchDir::new("segment");
    let mut g = Gen::new(data);
    let mode = g.u8();
    let mut written: Option<Vec<Vec<u8>>> = None;
    let mut mutation = (0u8, 0usize, false);
    let segment_bytes = 32 + u64::from(g.u8()) * 4;
    if mode.is_multiple_of(4) {
        std::fs::write(dir.0.join(format!("{:020}.log", 0)), g.rest()).expect("write segment");
    } else {
        let records: Vec<Vec<u8>> = (0..g.below(24)).map(|_| g.bytes(40).to_vec()).collect();
        {
            let (mut log, _) = SegmentedLog::open(log_config(&dir.0, segment_bytes)).expect("open");
            let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            for chunk in refs.chunks(1 + g.below(4)) {
                log.append(chunk).expect("append");
            }
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir.0)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        let which = g.below(255) % files.len();
        let last = which + 1 == files.len();
        let mut bytes = std::fs::read(&files[which]).expect("read segment");
        let kind = g.below(4);
        let at = g.u32() as usize;
        match kind {
            1 if !bytes.is_empty() => {
                let at = at % bytes.len();
                bytes[at] ^= g.u8().max(1);
                mutation = (1, at, last);
            }
            2 => {
                let at = at % (bytes.len() + 1);
                bytes.truncate(at);
                mutation = (2, at, last);
            }
            3 => {
                bytes.extend_from_slice(g.bytes(32));
                mutation = (3, 0, last);
            }
            _ => {}
        }
        std::fs::write(&files[which], &bytes).expect("write segment");
        written = Some(records);
    }
    let mut segments: Vec<(u64, Vec<u8>)> = std::fs::read_dir(&dir.0)
        .expect("list")
        .filter_map(|e| {
            let p = e.expect("entry").path();
            let base = p
                .file_name()?
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((base, std::fs::read(&p).expect("read segment")))
        })
        .collect();
    segments.sort();
    let want = recovery_oracle(&segments);
    let got = SegmentedLog::open(log_config(&dir.0, segment_bytes));
    let mut log = match (got, want) {
        (Err(_), None) => return,
        (Ok((log, report)), Some((entries, cut))) => {
            let served = read_all(&log);
            assert_eq!(
                served, entries,
                "recovered entries differ from the rules' prefix"
            );
            assert_eq!(report.truncated_bytes, cut, "bytes cut from the tail");
            log
        }
        (Ok((log, _)), None) => panic!(
            "open accepted a log the rules call corrupt ({} entries)",
            log.next_index()
        ),
        (Err(e), Some(_)) => panic!("open refused a log the rules accept: {e}"),
    };
    let entries = read_all(&log);
    if let Some(written) = &written {
        let (kind, at, in_last) = mutation;
        if kind == 3 && in_last {
            // Appended bytes can form valid frames of their own (libFuzzer learns CRCs from
            // comparisons), served after every written entry.
            assert!(
                entries.starts_with(written),
                "entries lost by appending bytes"
            );
        } else {
            assert!(
                written.starts_with(&entries),
                "recovered entries are not a prefix of the written ones"
            );
        }
        if kind == 0 {
            assert_eq!(entries.len(), written.len(), "entries lost without damage");
        }
        if kind == 1 && !in_last {
            panic!("a flipped byte in a sealed segment was not detected");
        }
        if kind == 2 && in_last {
            // Every frame that ends at or before the cut survives.
            let (base, _) = segments.last().expect("a segment");
            let mut end = 0;
            let mut whole = *base as usize;
            for r in &written[*base as usize..] {
                end += 8 + r.len();
                if end > at {
                    break;
                }
                whole += 1;
            }
            assert!(entries.len() >= whole, "entries before the cut were lost");
        }
    }
    log.append(&[b"after recovery"])
        .expect("append after recovery");
    drop(log);
    let (log, report) =
        SegmentedLog::open(log_config(&dir.0, segment_bytes)).expect("reopen after recovery");
    assert_eq!(report.truncated_bytes, 0);
    let mut want = entries;
    want.push(b"after recovery".to_vec());
    assert_eq!(read_all(&log), want);
}

/// A transfer file (see [`crate::raft::store::write_transfer`]) holding `snap` and `entries`
/// starting at `from`.
fn transfer_file(snap: &[u8], from: u64, entries: &[Bytes]) -> Vec<u8> {
    let mut out = b"TXPXFER1".to_vec();
    out.extend_from_slice(&(snap.len() as u64).to_le_bytes());
    out.extend_from_slice(snap);
    out.extend_from_slice(&from.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(e).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Installs `file` with openraft's announced `meta` on a fresh stream in `dir`; on success
/// returns the log's entries (first index, bytes) and the installed state.
fn install(
    dir: &Path,
    meta: &SnapshotMeta,
    file: &[u8],
) -> Result<(u64, Vec<Vec<u8>>, StreamState), String> {
    use crate::raft::store::{Shared, install_transfer};
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _in_rt = rt.enter();
    let spec = StreamSpec {
        name: "s".into(),
        retention: Retention::Limits,
        dedupe_by_key: false,
        group: "g".into(),
        dead_letter_stream: None,
        ledger: false,
    };
    let (log, _) = SegmentedLog::open(log_config(&dir.join("log"), 4096)).expect("open log");
    // One registry for the whole run: building one per input dominated the target's time.
    static METRICS: std::sync::OnceLock<crate::metrics::Metrics> = std::sync::OnceLock::new();
    let metrics = METRICS
        .get_or_init(crate::metrics::Metrics::new)
        .stream("s");
    let sh = Shared::open(
        spec,
        dir,
        log,
        0,
        metrics,
        crate::dedupe::DedupeConfig::default(),
    )
    .expect("open stream");
    let path = dir.join("transfer.recv");
    std::fs::write(&path, file).expect("write transfer");
    let f = std::fs::File::open(&path).expect("open transfer");
    if let Err(e) = install_transfer(&sh, meta, f) {
        // A refused transfer leaves the stream as it was (empty) and nothing staged.
        let log = sh.gc.read_log();
        assert_eq!(
            (log.first_index(), log.next_index()),
            (0, 0),
            "log changed by a refused install"
        );
        assert!(
            !dir.join(crate::raft::install::STAGE_DIR).exists(),
            "staging directory left behind"
        );
        assert!(
            !dir.join(crate::raft::install::MARKER).exists(),
            "redo marker of a refused install"
        );
        assert!(
            !dir.join(snapshot::FILE_NAME).exists(),
            "snapshot of a refused install"
        );
        return Err(e);
    }
    let log = sh.gc.read_log();
    let st = sh.with_core(|c| c.state.clone());
    Ok((log.first_index(), read_all(&log), st))
}

/// Snapshot install from a transfer file ([`crate::raft::store::install_transfer`], the
/// `TXPXFER1` file a follower receives; staged, see [`crate::raft::install`]). A refused
/// transfer must leave the stream as it was, with nothing staged. Mode 0: the input is the file, announced with the
/// meta of the snapshot inside it when that decodes. Otherwise a valid transfer (snapshot and
/// entries built from the input) is installed, possibly after a mutation (a flipped byte, a cut,
/// garbage appended): unmutated it must install exactly its entries and state; mutated, it may
/// fail, but a success must still hold exactly the original entries and state. Never a panic,
/// never an allocation sized by an unchecked length field.
pub fn transfer(data: &[u8]) {
    let dir = ScratchDir::new("transfer");
    let mut g = Gen::new(data);
    if g.u8().is_multiple_of(4) {
        let file = g.rest();
        let meta = file
            .get(16..)
            .and_then(|rest| {
                let n = usize::try_from(u64::from_le_bytes(file[8..16].try_into().ok()?)).ok()?;
                snapshot::decode(rest.get(..n)?).ok()
            })
            .map(|(m, _)| m.meta)
            .unwrap_or_default();
        let _ = install(&dir.0, &meta, file);
        return;
    }
    let mut meta = gen_snap_meta(&mut g);
    let count = g.below(6) as u64;
    let from = u64::from(g.u8() % 16);
    let end = from + count;
    meta.meta.last_log_id = end.checked_sub(1).map(|last| log_id(1, 0, last));
    let st = gen_state(&mut g);
    let snap = snapshot::encode(&meta, &st.encode());
    let entries: Vec<Bytes> = (from..end)
        .map(|i| encode_entry(&gen_entry(&mut g, i)))
        .collect();
    let mut file = transfer_file(&snap, from, &entries);
    let kind = g.below(4);
    let at = g.u32() as usize;
    match kind {
        1 => {
            let at = at % file.len();
            file[at] ^= g.u8().max(1);
        }
        2 => file.truncate(at % file.len()),
        3 => file.extend_from_slice(g.bytes(24)),
        _ => {}
    }
    match install(&dir.0, &meta.meta, &file) {
        Ok((first, got, got_state)) => {
            let want: Vec<Vec<u8>> = entries.iter().map(|b| b.to_vec()).collect();
            if !want.is_empty() {
                assert_eq!(first, from, "first index after install");
            }
            assert_eq!(got, want, "installed entries differ from the transfer's");
            assert_eq!(got_state, st, "installed state differs from the snapshot's");
        }
        Err(e) => assert!(kind != 0, "a valid transfer was refused: {e}"),
    }
}

/// The kind of peer RPC a fuzz input is about (its first byte modulo 3).
fn rpc_kind(g: &mut Gen) -> usize {
    g.below(3)
}

/// Decodes `payload` as `T` and checks that it re-encodes to bytes that decode the same.
fn postcard_roundtrip<T>(payload: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let Ok(v) = postcard::from_bytes::<T>(payload) {
        let b = postcard::to_allocvec(&v).expect("a decoded peer message encodes");
        let again = postcard::from_bytes::<T>(&b).expect("a re-encoded peer message decodes");
        assert_eq!(format!("{again:?}"), format!("{v:?}"));
    }
}

/// The peer service's request decoding ([`crate::raft::peer`]): the protobuf envelope
/// `RaftRequest`, then [`decode_request`] of its payload as openraft's AppendEntries, Vote or
/// InstallSnapshot request (chosen by the first byte; the second byte chooses between the input
/// being the envelope or the payload itself). A decoded request re-encodes to one that decodes
/// the same; a built request goes through postcard and the envelope and back unchanged.
pub fn peer_request(data: &[u8]) {
    fn decode_as<T>(rpc: &'static str, req: &RaftRequest)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        if let Ok(v) = decode_request::<T>(rpc, req) {
            let b = postcard::to_allocvec(&v).expect("a decoded request encodes");
            let again: T = postcard::from_bytes(&b).expect("a re-encoded request decodes");
            assert_eq!(format!("{again:?}"), format!("{v:?}"));
        }
    }
    let mut g = Gen::new(data);
    let kind = rpc_kind(&mut g);
    let wrapped = g.u8() & 1 == 0;
    let rest = g.rest();
    let req = if wrapped {
        RaftRequest::decode(rest).ok()
    } else {
        Some(RaftRequest {
            group: "s".into(),
            from: 1,
            to: 2,
            cluster_id: String::new(),
            payload: Bytes::copy_from_slice(rest),
        })
    };
    if let Some(req) = &req {
        match kind {
            0 => decode_as::<AppendEntriesRequest<TypeConfig>>("AppendEntries", req),
            1 => decode_as::<VoteRequest<TypeConfig>>("Vote", req),
            _ => decode_as::<SnapshotChunk>("InstallSnapshot", req),
        }
    }

    // Built: through postcard and the protobuf envelope, as the peer client sends it.
    let mut g = Gen::new(data);
    fn send<T>(rpc: &'static str, v: &T)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let env = RaftRequest {
            group: "transactions".into(),
            from: 0,
            to: 1,
            cluster_id: "c".into(),
            payload: postcard::to_allocvec(v).expect("request encodes").into(),
        };
        let wire = env.encode_to_vec();
        let env = RaftRequest::decode(&wire[..]).expect("envelope decodes");
        let back: T = decode_request(rpc, &env).expect("a built request decodes");
        assert_eq!(format!("{back:?}"), format!("{v:?}"));
    }
    match rpc_kind(&mut g) {
        0 => {
            let first = g.u64() >> 8;
            let entries = (0..g.below(4))
                .map(|i| gen_entry(&mut g, first + i as u64))
                .collect();
            send(
                "AppendEntries",
                &AppendEntriesRequest::<TypeConfig> {
                    vote: gen_vote(&mut g),
                    prev_log_id: (g.u8() & 1 == 0).then(|| gen_log_id(&mut g)),
                    entries,
                    leader_commit: (g.u8() & 1 == 0).then(|| gen_log_id(&mut g)),
                },
            );
        }
        1 => send(
            "Vote",
            &VoteRequest::<TypeConfig> {
                vote: gen_vote(&mut g),
                last_log_id: (g.u8() & 1 == 0).then(|| gen_log_id(&mut g)),
                leadership_transfer: g.u8() & 1 != 0,
            },
        ),
        _ => send(
            "InstallSnapshot",
            &SnapshotChunk {
                vote: gen_vote(&mut g),
                meta: gen_snap_meta(&mut g).meta,
                offset: g.u64(),
                data: Bytes::copy_from_slice(g.bytes(64)),
                done: g.u8() & 1 != 0,
            },
        ),
    }
}

/// The peer client's reply decoding ([`crate::raft::network`]): the protobuf `RaftReply`, then
/// its payload as `Result<Response, RaftError>` of the RPC chosen by the first byte (the second
/// chooses envelope or bare payload), with a re-encoding check as for [`peer_request`].
pub fn peer_reply(data: &[u8]) {
    let mut g = Gen::new(data);
    let kind = rpc_kind(&mut g);
    let wrapped = g.u8() & 1 == 0;
    let rest = g.rest();
    let payload = if wrapped {
        match RaftReply::decode(rest) {
            Ok(r) => r.payload.to_vec(),
            Err(_) => return,
        }
    } else {
        rest.to_vec()
    };
    match kind {
        0 => {
            postcard_roundtrip::<Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>>>(
                &payload,
            )
        }
        1 => {
            postcard_roundtrip::<Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>>(&payload)
        }
        _ => postcard_roundtrip::<
            Result<Option<SnapshotResponse<TypeConfig>>, RaftError<TypeConfig>>,
        >(&payload),
    }
}

// ---------------------------------------------------------------------------------------------
// Seed corpus.

/// The seed corpus of `target`: valid encodings built from fixed values, and a few mutations
/// of them (truncated, a flipped byte, a huge length field). `fuzz/corpus/<target>/` holds
/// exactly these (regenerate with `TXPIPE_WRITE_FUZZ_CORPUS=1 cargo test -p txpipe-broker
/// --test fuzz_corpus`). Empty for an unknown target.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let patterns: Vec<Vec<u8>> = (0u8..8)
        .map(|i| {
            (0..96u8)
                .map(|j| j.wrapping_mul(37).wrapping_add(i.wrapping_mul(101)))
                .collect()
        })
        .collect();
    let mut out: Vec<Vec<u8>> = Vec::new();
    match target {
        "command" => {
            for p in &patterns {
                out.push(gen_command(&mut Gen::new(p)).encode().to_vec());
            }
        }
        "entry" => {
            for (i, p) in patterns.iter().enumerate() {
                let e = gen_entry(&mut Gen::new(p), i as u64 * 1000);
                out.push(encode_entry(&e).to_vec());
            }
            let mut b = Vec::new();
            encode_commands(&mut b, &[Command::Trim { start_offset: 3 }]);
            out.push(b);
        }
        "state" => {
            for p in &patterns {
                out.push(gen_state(&mut Gen::new(p)).encode());
            }
        }
        "snapshot" => {
            for p in &patterns {
                let mut g = Gen::new(p);
                let meta = gen_snap_meta(&mut g);
                out.push(snapshot::encode(&meta, &gen_state(&mut g).encode()));
            }
        }
        "segment" | "transfer" => {
            // Structured inputs: mode byte, then the generator's bytes.
            for (i, p) in patterns.iter().enumerate() {
                let mut b = vec![1 + i as u8];
                b.extend_from_slice(p);
                out.push(b);
            }
            // Raw inputs (mode 0): valid frames / a valid transfer, as files.
            let mut raw = vec![0u8];
            if target == "segment" {
                raw.push(0);
                for p in &patterns[..3] {
                    crate::log::frame::encode_frame(&p[..20], &mut raw);
                }
            } else {
                let mut g = Gen::new(&patterns[0]);
                let mut meta = gen_snap_meta(&mut g);
                meta.meta.last_log_id = Some(log_id(1, 0, 4));
                let snap = snapshot::encode(&meta, &gen_state(&mut g).encode());
                let entries: Vec<Bytes> = (3..5)
                    .map(|i| encode_entry(&gen_entry(&mut g, i)))
                    .collect();
                raw.extend_from_slice(&transfer_file(&snap, 3, &entries));
            }
            out.push(raw);
        }
        "peer_request" | "peer_reply" => {
            for (i, p) in patterns.iter().enumerate() {
                let mut b = vec![i as u8 % 3, 1];
                b.extend_from_slice(p);
                out.push(b);
            }
            for (i, p) in patterns[..3].iter().enumerate() {
                let mut g = Gen::new(p);
                let payload =
                    if target == "peer_request" {
                        match i {
                            0 => postcard::to_allocvec(&AppendEntriesRequest::<TypeConfig> {
                                vote: gen_vote(&mut g),
                                prev_log_id: Some(gen_log_id(&mut g)),
                                entries: vec![gen_entry(&mut g, 7)],
                                leader_commit: Some(gen_log_id(&mut g)),
                            }),
                            1 => postcard::to_allocvec(&VoteRequest::<TypeConfig>::new(
                                gen_vote(&mut g),
                                Some(gen_log_id(&mut g)),
                            )),
                            _ => postcard::to_allocvec(&SnapshotChunk {
                                vote: gen_vote(&mut g),
                                meta: gen_snap_meta(&mut g).meta,
                                offset: 0,
                                data: Bytes::from_static(b"TXPXFER2"),
                                done: true,
                            }),
                        }
                    } else {
                        match i {
                            0 => postcard::to_allocvec(&Ok::<_, RaftError<TypeConfig>>(
                                AppendEntriesResponse::<TypeConfig>::HigherVote(gen_vote(&mut g)),
                            )),
                            1 => postcard::to_allocvec(&Ok::<_, RaftError<TypeConfig>>(
                                VoteResponse::<TypeConfig>::new(
                                    gen_vote(&mut g),
                                    Some(gen_log_id(&mut g)),
                                    true,
                                ),
                            )),
                            _ => postcard::to_allocvec(&Ok::<_, RaftError<TypeConfig>>(Some(
                                SnapshotResponse::<TypeConfig>::new(gen_vote(&mut g)),
                            ))),
                        }
                    }
                    .expect("seed encodes");
                let mut b = vec![i as u8, 1];
                b.extend_from_slice(&payload);
                out.push(b);
                let env = if target == "peer_request" {
                    RaftRequest {
                        group: "transactions".into(),
                        from: 0,
                        to: 1,
                        cluster_id: "c".into(),
                        payload: payload.into(),
                    }
                    .encode_to_vec()
                } else {
                    RaftReply {
                        payload: payload.into(),
                    }
                    .encode_to_vec()
                };
                let mut b = vec![i as u8, 0];
                b.extend_from_slice(&env);
                out.push(b);
            }
        }
        _ => return Vec::new(),
    }
    // Mutations of the valid encodings: cut in half, one byte flipped, a length-like field
    // set to all ones.
    let valid = out.len();
    for i in 0..valid.min(4) {
        let v = out[i].clone();
        out.push(v[..v.len() / 2].to_vec());
        let mut f = v.clone();
        let at = f.len() / 3;
        if let Some(b) = f.get_mut(at) {
            *b ^= 0x5a;
        }
        out.push(f);
        let mut h = v;
        for b in h.iter_mut().skip(2).take(4) {
            *b = 0xff;
        }
        out.push(h);
    }
    out
}
