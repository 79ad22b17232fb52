//! Unit tests of [`SegmentedLog`]: appends, reads, rolls, recovery, truncation, retention.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;

fn small_config(dir: &Path) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 1024,
        index_interval_bytes: 128,
        max_entry_bytes: 4096,
        fsync: true,
    }
}

fn open(config: &LogConfig) -> (SegmentedLog, RecoveryReport) {
    SegmentedLog::open(config.clone()).expect("open")
}

fn entry(i: u64) -> Vec<u8> {
    // Varying sizes so frames do not line up with the index interval.
    format!("entry-{i}-{}", "x".repeat((i % 37) as usize)).into_bytes()
}

fn append_n(log: &mut SegmentedLog, from: u64, n: u64) {
    let owned: Vec<Vec<u8>> = (from..from + n).map(entry).collect();
    let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    let r = log.append(&refs).expect("append");
    assert_eq!(r, from..from + n);
    log.sync().expect("sync");
}

fn assert_entries(log: &SegmentedLog, range: Range<u64>) {
    for i in range {
        assert_eq!(
            log.read(i).expect("read").as_ref(),
            entry(i).as_slice(),
            "entry {i}"
        );
    }
}

fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(segment_name(base))
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn append_raw(p: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(bytes).unwrap();
}

/// Flips one byte of a file at `pos`.
fn flip_byte(p: &Path, pos: u64) {
    let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, pos).unwrap();
}

/// Byte position of each frame of a segment file.
fn frame_positions(p: &Path) -> Vec<u64> {
    let data = std::fs::read(p).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        out.push(at as u64);
        let (len, _) = read_header(&data[at..]);
        at += HEADER_BYTES + len as usize;
    }
    out
}

#[test]
fn a_new_log_is_empty_at_index_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (log, report) = open(&small_config(dir.path()));
    assert_eq!((log.first_index(), log.next_index()), (0, 0));
    assert_eq!(
        report,
        RecoveryReport {
            segments: 1,
            entries: 0,
            truncated_bytes: 0
        }
    );
    assert!(seg_path(dir.path(), 0).exists());
    assert!(matches!(
        log.read(0),
        Err(LogError::OutOfRange {
            index: 0,
            first: 0,
            next: 0
        })
    ));
    assert!(log.read_range(0, 10, 1000).unwrap().is_empty());
}

#[test]
fn entries_survive_a_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    {
        let (mut log, _) = open(&config);
        append_n(&mut log, 0, 5);
        let empty: &[u8] = b"";
        assert_eq!(log.append(&[empty]).unwrap(), 5..6);
        log.sync().unwrap();
    }
    let (mut log, report) = open(&config);
    assert_eq!(report.entries, 6);
    assert_eq!(report.truncated_bytes, 0);
    assert_entries(&log, 0..5);
    assert!(
        log.read(5).unwrap().is_empty(),
        "an empty entry is a valid frame"
    );
    append_n(&mut log, 6, 3);
    assert_entries(&log, 6..9);
}

#[test]
fn appends_roll_segments_and_reads_cross_segment_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    for chunk in 0..20 {
        append_n(&mut log, chunk * 10, 10);
    }
    let segs = log.segments();
    assert!(segs.len() > 3, "expected several segments, got {segs:?}");
    for w in segs.windows(2) {
        assert_eq!(w[0].next_index, w[1].base_index, "segments are contiguous");
        assert!(
            w[0].bytes >= config.segment_bytes,
            "sealed segments are full"
        );
        assert!(
            w[0].bytes < config.segment_bytes + 100,
            "at most one frame over"
        );
    }
    for s in &segs {
        assert_eq!(file_len(&seg_path(dir.path(), s.base_index)), s.bytes);
    }
    assert_eq!(log.size_bytes(), segs.iter().map(|s| s.bytes).sum::<u64>());
    // The index is sparse: about one entry per 128 bytes of a ~1 KiB segment.
    let first = &log.segments[0];
    let frames = (first.next - first.base) as usize;
    assert!(
        first.index.len() > 3 && first.index.len() < frames,
        "{} of {frames}",
        first.index.len()
    );
    assert_entries(&log, 0..200);

    // A range read that starts in one segment and ends in a later one.
    let start = segs[1].next_index - 3;
    let got = log.read_range(start, 50, usize::MAX).unwrap();
    assert_eq!(got.len(), 50);
    for (k, (i, b)) in got.iter().enumerate() {
        assert_eq!(*i, start + k as u64);
        assert_eq!(b.as_ref(), entry(*i).as_slice());
    }
    // max_bytes stops the range (but one entry always comes back).
    let one = log.read_range(10, 50, 1).unwrap();
    assert_eq!(one.len(), 1);
    let limited = log.read_range(10, 50, 100).unwrap();
    assert!(limited.iter().map(|(_, b)| b.len()).sum::<usize>() <= 100);
    assert!(limited.len() > 1);

    // Everything is found again after a reopen (the sparse index is rebuilt by scanning).
    drop(log);
    let (log, report) = open(&config);
    assert_eq!(report.segments, segs.len());
    assert_eq!(log.segments(), segs);
    assert_entries(&log, 0..200);
}

#[test]
fn a_single_append_larger_than_a_segment_spans_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 100);
    assert!(log.segments().len() > 2);
    drop(log);
    let (log, _) = open(&config);
    assert_entries(&log, 0..100);
}

#[test]
fn oversized_entries_are_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(&small_config(dir.path()));
    let big = vec![0u8; 4097];
    let ok: &[u8] = b"ok";
    let err = log.append(&[ok, &big]).unwrap_err();
    assert!(matches!(
        err,
        LogError::EntryTooLarge {
            size: 4097,
            limit: 4096
        }
    ));
    assert_eq!(log.next_index(), 0);
}

#[test]
fn a_torn_frame_header_at_the_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 5);
    drop(log);
    let p = seg_path(dir.path(), 0);
    let clean = file_len(&p);
    append_raw(&p, &[9, 0, 0]);
    let (mut log, report) = open(&config);
    assert_eq!(report.truncated_bytes, 3);
    assert_eq!(report.entries, 5);
    assert_eq!(file_len(&p), clean);
    assert_entries(&log, 0..5);
    append_n(&mut log, 5, 2);
    drop(log);
    let (log, report) = open(&config);
    assert_eq!(report.truncated_bytes, 0);
    assert_entries(&log, 0..7);
}

#[test]
fn a_torn_frame_payload_at_the_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 5);
    drop(log);
    let p = seg_path(dir.path(), 0);
    let clean = file_len(&p);
    let mut frame = Vec::new();
    encode_frame(
        b"a frame whose payload never fully reached the disk",
        &mut frame,
    );
    append_raw(&p, &frame[..20]);
    let (log, report) = open(&config);
    assert_eq!(report.truncated_bytes, 20);
    assert_eq!(file_len(&p), clean);
    assert_eq!(log.next_index(), 5);
    assert_entries(&log, 0..5);
}

#[test]
fn a_final_frame_with_a_bad_crc_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 6);
    drop(log);
    let p = seg_path(dir.path(), 0);
    let last = *frame_positions(&p).last().unwrap();
    let len = file_len(&p);
    flip_byte(&p, len - 1); // inside the last payload
    let (log, report) = open(&config);
    assert_eq!(report.truncated_bytes, len - last);
    assert_eq!(log.next_index(), 5);
    assert_entries(&log, 0..5);
}

#[test]
fn zero_filled_space_at_the_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 3);
    drop(log);
    let p = seg_path(dir.path(), 0);
    append_raw(&p, &[0u8; 300]);
    let (log, report) = open(&config);
    assert_eq!(report.truncated_bytes, 300);
    assert_eq!(log.next_index(), 3);
}

#[test]
fn a_bad_crc_followed_by_a_valid_frame_is_corruption_naming_the_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 6);
    drop(log);
    let p = seg_path(dir.path(), 0);
    let positions = frame_positions(&p);
    flip_byte(&p, positions[3] + HEADER_BYTES as u64); // payload of entry 3
    let err = SegmentedLog::open(config.clone()).unwrap_err();
    match &err {
        LogError::Corrupt {
            segment,
            position,
            index,
            reason,
        } => {
            assert_eq!(segment, &p);
            assert_eq!(*position, positions[3]);
            assert_eq!(*index, 3);
            assert!(reason.contains("CRC mismatch"), "{reason}");
            assert!(
                reason.contains(&format!("valid frame follows at byte {}", positions[4])),
                "{reason}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("at byte {}", positions[3])), "{msg}");
    // Nothing was truncated.
    assert_eq!(frame_positions(&p), positions);
}

#[test]
fn a_corrupted_length_field_before_valid_frames_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 6);
    drop(log);
    let p = seg_path(dir.path(), 0);
    let positions = frame_positions(&p);
    // A length running past the end of the file looks torn, but valid frames follow.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&100_000u32.to_le_bytes(), positions[2])
        .unwrap();
    let err = SegmentedLog::open(config).unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { index: 2, position, .. } if position == positions[2]),
        "{err}"
    );
}

#[test]
fn corruption_in_a_sealed_segment_is_an_error_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 100);
    let segs = log.segments();
    drop(log);
    let p = seg_path(dir.path(), segs[0].base_index);
    flip_byte(&p, segs[0].bytes - 1); // last frame of the first segment
    let err = SegmentedLog::open(config.clone()).unwrap_err();
    match &err {
        LogError::Corrupt {
            segment,
            index,
            reason,
            ..
        } => {
            assert_eq!(segment, &p);
            assert_eq!(*index, segs[0].next_index - 1);
            assert!(reason.contains("sealed"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A torn end of a sealed segment is also corruption.
    flip_byte(&p, segs[0].bytes - 1);
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(segs[0].bytes - 2).unwrap();
    assert!(matches!(
        SegmentedLog::open(config).unwrap_err(),
        LogError::Corrupt { .. }
    ));
}

#[test]
fn a_missing_middle_segment_is_a_continuity_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 100);
    let segs = log.segments();
    drop(log);
    std::fs::remove_file(seg_path(dir.path(), segs[1].base_index)).unwrap();
    let err = SegmentedLog::open(config).unwrap_err();
    assert!(err.to_string().contains("are missing"), "{err}");
}

#[test]
fn purge_deletes_only_whole_segments_below_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 100);
    let segs = log.segments();
    // An index inside the second segment frees only the first.
    let inside = segs[1].base_index + 1;
    assert_eq!(log.purge_before(inside).unwrap(), segs[1].base_index);
    assert!(!seg_path(dir.path(), 0).exists());
    assert!(seg_path(dir.path(), segs[1].base_index).exists());
    assert!(matches!(
        log.read(segs[1].base_index - 1),
        Err(LogError::OutOfRange { first, .. }) if first == segs[1].base_index
    ));
    assert!(log.read_range(0, 10, 1000).is_err());
    assert_entries(&log, segs[1].base_index..100);
    // Beyond the end: everything but the active segment goes.
    let first = log.purge_before(1_000).unwrap();
    assert_eq!(first, segs.last().unwrap().base_index);
    assert_eq!(log.segments().len(), 1);
    assert_eq!(log.next_index(), 100);
    drop(log);
    let (log, report) = open(&config);
    assert_eq!(log.first_index(), first);
    assert_eq!(report.entries, 100 - first);
    assert_entries(&log, first..100);
}

#[test]
fn truncate_then_append_continues_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 100);
    let segs = log.segments();
    assert!(segs.len() >= 3);
    // Cut inside the second segment: later segments are deleted.
    let cut = segs[1].base_index + 2;
    log.truncate_from(cut).unwrap();
    assert_eq!(log.next_index(), cut);
    assert_eq!(log.segments().len(), 2);
    for s in &segs[2..] {
        assert!(!seg_path(dir.path(), s.base_index).exists());
    }
    assert!(matches!(log.read(cut), Err(LogError::OutOfRange { .. })));
    // New entries at the cut differ from the old ones.
    let new: Vec<u8> = b"replacement".to_vec();
    assert_eq!(log.append(&[&new]).unwrap(), cut..cut + 1);
    log.sync().unwrap();
    append_n(&mut log, cut + 1, 30);
    drop(log);
    let (mut log, report) = open(&config);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(log.next_index(), cut + 31);
    assert_entries(&log, 0..cut);
    assert_eq!(log.read(cut).unwrap().as_ref(), b"replacement");
    assert_entries(&log, cut + 1..cut + 31);
    // Truncating at a segment boundary leaves that segment empty and active.
    let boundary = log.segments()[1].base_index;
    log.truncate_from(boundary).unwrap();
    assert_eq!(log.next_index(), boundary);
    assert_eq!(log.segments().last().unwrap().bytes, 0);
    // Past the end is a no-op; below the first index is out of range.
    log.truncate_from(10_000).unwrap();
    log.purge_before(boundary).unwrap();
    assert!(matches!(
        log.truncate_from(0),
        Err(LogError::OutOfRange { .. })
    ));
    append_n(&mut log, boundary, 3);
    drop(log);
    let (log, _) = open(&config);
    assert_entries(&log, boundary..boundary + 3);
}

#[test]
fn reset_moves_an_empty_log_to_a_new_index() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    log.reset_to(500).unwrap();
    assert_eq!((log.first_index(), log.next_index()), (500, 500));
    assert!(!seg_path(dir.path(), 0).exists());
    assert!(seg_path(dir.path(), 500).exists());
    let e: &[u8] = b"after reset";
    assert_eq!(log.append(&[e]).unwrap(), 500..501);
    log.sync().unwrap();
    drop(log);
    let (log, report) = open(&config);
    assert_eq!((log.first_index(), log.next_index()), (500, 501));
    assert_eq!(report.entries, 1);
    assert_eq!(log.read(500).unwrap().as_ref(), b"after reset");
}

#[test]
fn reset_on_a_non_empty_log_discards_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 100);
    log.reset_to(50).unwrap();
    assert_eq!((log.first_index(), log.next_index()), (50, 50));
    assert_eq!(log.segments().len(), 1);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![segment_name(50)]);
}

#[test]
fn an_interrupted_reset_is_completed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 100);
    drop(log);
    // State after a crash right after the reset marker became durable.
    std::fs::File::create(dir.path().join(format!("{:020}.log.reset", 7_000))).unwrap();
    let (log, report) = open(&config);
    assert_eq!((log.first_index(), log.next_index()), (7_000, 7_000));
    assert_eq!(report.segments, 1);
    assert!(seg_path(dir.path(), 7_000).exists());
    assert!(!dir.path().join(format!("{:020}.log.reset", 7_000)).exists());
}

#[test]
fn open_ignores_unrelated_files_and_creates_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("a/b");
    let config = small_config(&sub);
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 2);
    drop(log);
    std::fs::write(sub.join("README"), "not a segment").unwrap();
    std::fs::write(sub.join("123.log"), "wrong name width").unwrap();
    let (log, report) = open(&config);
    assert_eq!(report.segments, 1);
    assert_entries(&log, 0..2);
}

#[test]
fn a_frame_corrupted_after_open_fails_reads_with_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let (mut log, _) = open(&config);
    append_n(&mut log, 0, 6);
    let p = seg_path(dir.path(), 0);
    let positions = frame_positions(&p);
    flip_byte(&p, positions[4] + HEADER_BYTES as u64);
    assert!(matches!(
        log.read(4),
        Err(LogError::Corrupt { index: 4, .. })
    ));
    assert_entries(&log, 0..4);
}
