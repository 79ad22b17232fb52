//! Commands: what a stream's log entries hold, and their binary encoding.
//!
//! Every log entry is one encoded [`Command`]. Offsets are not in the log: the state machine
//! ([`crate::state`]) assigns them when it applies an `Append`, so a Raft follower (issue
//! "Replicated broker") derives the same offsets from the same entries.
//!
//! Encoding (little endian, fixed width; `bytes` = `u32` length then the bytes):
//!
//! | field | layout |
//! |---|---|
//! | header | `version: u8 = 1`, `kind: u8` |
//! | `Append` (kind 6) | `producer_id: u64`, `epoch: u64`, `sequence: u64`, `position: u64`, `n: u32`, then `n` × (`timestamp_us: i64`, `key: bytes`, `value: bytes`) |
//! | legacy `Append` (kind 1, read only) | `producer_id: u64`, `sequence: u64`, `n: u32`, records as above |
//! | `Ack` (kind 2) | `n: u32`, `n` × `offset: u64` |
//! | `Attempts` (kind 3) | `n: u32`, `n` × (`offset: u64`, `attempts: u32`) |
//! | `DeadLettered` (kind 4) | `n: u32`, `n` × `offset: u64`, `reason: bytes` |
//! | `Trim` (kind 5) | `start_offset: u64` |
//! | `InitProducer` (kind 7) | `name: bytes` (UTF-8) |
//!
//! Compatibility: entries are never rewritten, so every kind ever written stays decodable.
//! Kind 1 was the `Append` of logs written before producer registration (issue 12); it decodes
//! as an `Append` with `epoch` 0 and `position` 0, which the state machine applies with the
//! rules of that time (see [`crate::state`]). New entries always use kind 6. A broker of an
//! older version cannot read kinds 6 and 7: upgrade every replica of a cluster together.
//! | `Clock` (kind 8) | `unix_ms: u64`, `dedupe_max_age_ms: u64`, `dedupe_max_keys: u64` |
//! | `Ledger` (kind 9) | `time_ns: u64`, `command: bytes` ([`LedgerCommand::encode`]) |
//!
//! Decoding an `Append` slices keys and values out of the entry's buffer without copying.

use bytes::{Buf, Bytes};
use txpipe_client::broker::v1::Record;

use crate::ledger::LedgerCommand;

/// Version byte written first in every entry.
pub const VERSION: u8 = 1;

/// A state-machine command of one stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Append a produced batch. `producer_id` 0 disables idempotence.
    Append {
        /// Idempotent producer id from [`Command::InitProducer`] (0: none).
        producer_id: u64,
        /// Epoch of that producer (≥ 1; 0 only in legacy kind-1 entries).
        epoch: u64,
        /// Batch sequence of that producer within its epoch (1, 2, ...).
        sequence: u64,
        /// Producer-defined resume position after this batch (0: none).
        position: u64,
        /// The records.
        records: Vec<Record>,
    },
    /// Register producer `name` (empty: anonymous): assigns its id on first sight and a new
    /// epoch on every registration.
    InitProducer {
        /// Stable producer name, UTF-8; empty for an anonymous producer.
        name: String,
    },
    /// Work-queue offsets acknowledged by consumers.
    Ack {
        /// Offsets, any order.
        offsets: Vec<u64>,
    },
    /// Delivery attempts made so far for offsets that were redelivered.
    Attempts {
        /// `(offset, attempts)` pairs.
        entries: Vec<(u64, u32)>,
    },
    /// Work-queue offsets resolved by moving them to the dead-letter stream.
    DeadLettered {
        /// Offsets.
        offsets: Vec<u64>,
        /// Why (the last failure).
        reason: String,
    },
    /// Forget records below `start_offset` (retention); their segments may then be deleted.
    Trim {
        /// New first offset of the stream.
        start_offset: u64,
    },
    /// The leader's wall clock and key-dedupe window, put first in every entry of a stream
    /// that deduplicates by key: the state machine's only source of time
    /// ([`crate::dedupe`]).
    Clock {
        /// Leader's clock, ms since the Unix epoch.
        unix_ms: u64,
        /// Keys older than this are forgotten, ms.
        dedupe_max_age_ms: u64,
        /// At most this many keys are remembered.
        dedupe_max_keys: u64,
    },
    /// A command of a ledger shard ([`crate::ledger`]), only in streams whose
    /// [`crate::state::StreamSpec::ledger`] is set.
    Ledger {
        /// The leader's clock when it proposed the entry, ns since the Unix epoch: the
        /// ledger's only source of time (timestamps, hold expiry).
        time_ns: u64,
        /// The command.
        command: LedgerCommand,
    },
}

const APPEND_V1: u8 = 1;
const ACK: u8 = 2;
const ATTEMPTS: u8 = 3;
const DEAD_LETTERED: u8 = 4;
const TRIM: u8 = 5;
const APPEND: u8 = 6;
const INIT_PRODUCER: u8 = 7;
const CLOCK: u8 = 8;
const LEDGER: u8 = 9;

impl Command {
    /// Encodes the command (see the module docs for the layout).
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(VERSION);
        match self {
            Command::Append {
                producer_id,
                epoch,
                sequence,
                position,
                records,
            } => {
                out.push(APPEND);
                for v in [producer_id, epoch, sequence, position] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&(records.len() as u32).to_le_bytes());
                for r in records {
                    out.extend_from_slice(&r.timestamp_us.to_le_bytes());
                    put_bytes(&mut out, &r.key);
                    put_bytes(&mut out, &r.value);
                }
            }
            Command::Ack { offsets } => {
                out.push(ACK);
                out.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
                for o in offsets {
                    out.extend_from_slice(&o.to_le_bytes());
                }
            }
            Command::Attempts { entries } => {
                out.push(ATTEMPTS);
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for (o, a) in entries {
                    out.extend_from_slice(&o.to_le_bytes());
                    out.extend_from_slice(&a.to_le_bytes());
                }
            }
            Command::DeadLettered { offsets, reason } => {
                out.push(DEAD_LETTERED);
                out.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
                for o in offsets {
                    out.extend_from_slice(&o.to_le_bytes());
                }
                put_bytes(&mut out, reason.as_bytes());
            }
            Command::Trim { start_offset } => {
                out.push(TRIM);
                out.extend_from_slice(&start_offset.to_le_bytes());
            }
            Command::InitProducer { name } => {
                out.push(INIT_PRODUCER);
                put_bytes(&mut out, name.as_bytes());
            }
            Command::Clock {
                unix_ms,
                dedupe_max_age_ms,
                dedupe_max_keys,
            } => {
                out.push(CLOCK);
                for v in [unix_ms, dedupe_max_age_ms, dedupe_max_keys] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Command::Ledger { time_ns, command } => {
                out.push(LEDGER);
                out.extend_from_slice(&time_ns.to_le_bytes());
                put_bytes(&mut out, &command.encode());
            }
        }
        Bytes::from(out)
    }

    /// Exact size of [`Self::encode`]'s output, bytes.
    pub fn encoded_len(&self) -> usize {
        2 + match self {
            Command::Append { records, .. } => {
                36 + records
                    .iter()
                    .map(|r| 16 + r.key.len() + r.value.len())
                    .sum::<usize>()
            }
            Command::Ack { offsets } => 4 + 8 * offsets.len(),
            Command::Attempts { entries } => 4 + 12 * entries.len(),
            Command::DeadLettered { offsets, reason } => 8 + 8 * offsets.len() + reason.len(),
            Command::Trim { .. } => 8,
            Command::InitProducer { name } => 4 + name.len(),
            Command::Clock { .. } => 24,
            Command::Ledger { command, .. } => 12 + command.encoded_len(),
        }
    }

    /// Decodes an entry. Keys and values of an `Append` share `buf`'s memory.
    ///
    /// Errors: a description of the first malformed field (unknown version or kind, truncation,
    /// trailing bytes, invalid UTF-8 reason).
    pub fn decode(buf: Bytes) -> Result<Command, String> {
        let mut r = Reader { buf };
        let version = r.u8()?;
        if version != VERSION {
            return Err(format!("unknown command version {version}"));
        }
        let kind = r.u8()?;
        let cmd = match kind {
            APPEND | APPEND_V1 => {
                let producer_id = r.u64()?;
                let (epoch, sequence, position) = if kind == APPEND {
                    (r.u64()?, r.u64()?, r.u64()?)
                } else {
                    (0, r.u64()?, 0)
                };
                let n = r.u32()? as usize;
                if n > r.buf.len() / 16 {
                    return Err(format!(
                        "append claims {n} records in {} bytes",
                        r.buf.len()
                    ));
                }
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    let timestamp_us = r.u64()? as i64;
                    let key = r.bytes()?;
                    let value = r.bytes()?;
                    records.push(Record {
                        key,
                        value,
                        timestamp_us,
                    });
                }
                Command::Append {
                    producer_id,
                    epoch,
                    sequence,
                    position,
                    records,
                }
            }
            ACK => {
                let n = r.count(8)?;
                let offsets = (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?;
                Command::Ack { offsets }
            }
            ATTEMPTS => {
                let n = r.count(12)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push((r.u64()?, r.u32()?));
                }
                Command::Attempts { entries }
            }
            DEAD_LETTERED => {
                let n = r.count(8)?;
                let offsets = (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?;
                let reason = String::from_utf8(r.bytes()?.to_vec())
                    .map_err(|_| "reason is not UTF-8".to_string())?;
                Command::DeadLettered { offsets, reason }
            }
            TRIM => Command::Trim {
                start_offset: r.u64()?,
            },
            INIT_PRODUCER => Command::InitProducer {
                name: String::from_utf8(r.bytes()?.to_vec())
                    .map_err(|_| "producer name is not UTF-8".to_string())?,
            },
            CLOCK => Command::Clock {
                unix_ms: r.u64()?,
                dedupe_max_age_ms: r.u64()?,
                dedupe_max_keys: r.u64()?,
            },
            LEDGER => Command::Ledger {
                time_ns: r.u64()?,
                command: LedgerCommand::decode(&r.bytes()?)
                    .map_err(|e| format!("ledger command: {e}"))?,
            },
            k => return Err(format!("unknown command kind {k}")),
        };
        if !r.buf.is_empty() {
            return Err(format!("{} trailing bytes", r.buf.len()));
        }
        Ok(cmd)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Bounds-checked little-endian reader over a [`Bytes`] (shared by snapshots).
pub(crate) struct Reader {
    pub(crate) buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), String> {
        if self.buf.remaining() < n {
            Err(format!(
                "truncated: need {n} bytes, have {}",
                self.buf.remaining()
            ))
        } else {
            Ok(())
        }
    }
    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        self.need(4)?;
        Ok(self.buf.get_u32_le())
    }
    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        self.need(8)?;
        Ok(self.buf.get_u64_le())
    }
    pub(crate) fn u128(&mut self) -> Result<u128, String> {
        self.need(16)?;
        Ok(self.buf.get_u128_le())
    }
    pub(crate) fn bytes(&mut self) -> Result<Bytes, String> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    /// Reads a `u32` count of items of at least `item` bytes each, checked against the rest.
    pub(crate) fn count(&mut self, item: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n > self.buf.remaining() / item {
            return Err(format!(
                "count {n} exceeds the {} remaining bytes",
                self.buf.remaining()
            ));
        }
        Ok(n)
    }
}

/// 128-bit hash of a record key, for key deduplication.
///
/// Our own multiply-xorshift construction (the "folded multiply" of wyhash, Wang Yi 2019, in
/// two lanes with different constants). It must never change: hashes are stored in snapshots.
/// Not collision-resistant against an adversary; for random keys the chance of any collision
/// among `n` keys is about n² / 2^129.
pub fn key_hash(key: &[u8]) -> u128 {
    #[inline]
    fn fold(a: u64, b: u64) -> u64 {
        let r = u128::from(a).wrapping_mul(u128::from(b));
        (r as u64) ^ ((r >> 64) as u64)
    }
    const P0: u64 = 0xa076_1d64_78bd_642f;
    const P1: u64 = 0xe703_7ed1_a0b4_28db;
    const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
    const P3: u64 = 0x5899_65cc_7537_4cc3;
    let len = key.len() as u64;
    let mut a = P0 ^ len;
    let mut b = P2 ^ len.rotate_left(29);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        a = fold(a ^ w, P1);
        b = fold(b ^ w.rotate_left(31), P3).wrapping_add(a);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut t = [0u8; 8];
        t[..rest.len()].copy_from_slice(rest);
        let w = u64::from_le_bytes(t);
        a = fold(a ^ w, P1);
        b = fold(b ^ w.rotate_left(31), P3).wrapping_add(a);
    }
    let hi = fold(a ^ P3, b ^ P0);
    let lo = fold(b ^ P1, a ^ P2 ^ hi);
    (u128::from(hi) << 64) | u128::from(lo)
}

/// 64-bit checksum of a batch's records (timestamps, keys and values, with their lengths), kept
/// in the idempotent producer table to tell an exact retry from a sequence reused with other
/// records. Built on [`key_hash`]; it must never change (checksums are stored in snapshots).
pub fn batch_checksum(records: &[Record]) -> u64 {
    let mut acc = key_hash(&(records.len() as u64).to_le_bytes());
    let mut mix = |h: u128| {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(&acc.to_le_bytes());
        b[16..].copy_from_slice(&h.to_le_bytes());
        acc = key_hash(&b);
    };
    for r in records {
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&r.timestamp_us.to_le_bytes());
        head[8..12].copy_from_slice(&(r.key.len() as u32).to_le_bytes());
        head[12..].copy_from_slice(&(r.value.len() as u32).to_le_bytes());
        mix(key_hash(&head));
        mix(key_hash(&r.key));
        mix(key_hash(&r.value));
    }
    (acc as u64) ^ ((acc >> 64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, v: &str, ts: i64) -> Record {
        Record {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
            timestamp_us: ts,
        }
    }

    #[test]
    fn every_command_round_trips_through_its_encoding() {
        let cmds = vec![
            Command::Append {
                producer_id: 7,
                epoch: 2,
                sequence: 3,
                position: 1500,
                records: vec![rec("a", "x", 1), rec("", "yy", -5)],
            },
            Command::InitProducer {
                name: "ns/pipeline/seed-42".into(),
            },
            Command::InitProducer {
                name: String::new(),
            },
            Command::Ack {
                offsets: vec![1, 5, 3],
            },
            Command::Attempts {
                entries: vec![(4, 2), (9, 3)],
            },
            Command::DeadLettered {
                offsets: vec![2],
                reason: "ack deadline exceeded".into(),
            },
            Command::Trim { start_offset: 42 },
            Command::Clock {
                unix_ms: 1_700_000_000_000,
                dedupe_max_age_ms: 7,
                dedupe_max_keys: 9,
            },
        ];
        for c in cmds {
            let b = c.encode();
            assert_eq!(b.len(), c.encoded_len());
            assert_eq!(b[0], VERSION);
            assert_eq!(Command::decode(b).unwrap(), c);
        }
    }

    #[test]
    fn legacy_kind_1_appends_still_decode_with_epoch_and_position_0() {
        // Bytes of a kind-1 Append as written before producer registration.
        let mut b = vec![1u8, 1];
        b.extend_from_slice(&42u64.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&7i64.to_le_bytes());
        put_bytes(&mut b, b"k");
        put_bytes(&mut b, b"v");
        assert_eq!(
            Command::decode(Bytes::from(b)).unwrap(),
            Command::Append {
                producer_id: 42,
                epoch: 0,
                sequence: 5,
                position: 0,
                records: vec![rec("k", "v", 7)],
            }
        );
    }

    #[test]
    fn batch_checksum_tells_different_records_apart() {
        let a = vec![rec("a", "x", 1), rec("b", "y", 2)];
        assert_eq!(batch_checksum(&a), batch_checksum(&a.clone()));
        let variants = [
            vec![rec("a", "x", 1)],
            vec![rec("b", "y", 2), rec("a", "x", 1)],
            vec![rec("a", "x", 1), rec("b", "y", 3)],
            vec![rec("a", "x", 1), rec("b", "z", 2)],
            vec![rec("ax", "", 1), rec("b", "y", 2)],
            vec![],
        ];
        for v in variants {
            assert_ne!(batch_checksum(&a), batch_checksum(&v), "{v:?}");
        }
    }

    #[test]
    fn malformed_entries_are_rejected_with_a_reason() {
        assert!(
            Command::decode(Bytes::from_static(&[2, 1]))
                .unwrap_err()
                .contains("version")
        );
        assert!(
            Command::decode(Bytes::from_static(&[1, 99]))
                .unwrap_err()
                .contains("kind")
        );
        let mut b = Command::Ack {
            offsets: vec![1, 2],
        }
        .encode()
        .to_vec();
        b.pop();
        assert!(Command::decode(Bytes::from(b)).is_err());
        let mut b = Command::Trim { start_offset: 1 }.encode().to_vec();
        b.push(0);
        assert!(
            Command::decode(Bytes::from(b))
                .unwrap_err()
                .contains("trailing")
        );
    }

    #[test]
    fn key_hash_is_stable_and_spreads_keys() {
        assert_eq!(key_hash(b"tx-1"), key_hash(b"tx-1"));
        assert_ne!(key_hash(b"tx-1"), key_hash(b"tx-2"));
        assert_ne!(key_hash(b""), key_hash(b"\0"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u32 {
            assert!(seen.insert(key_hash(format!("tx-{i:020}").as_bytes())));
        }
    }
}
