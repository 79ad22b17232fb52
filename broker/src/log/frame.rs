//! Frame encoding of one log entry: `[len: u32 LE][crc: u32 LE][payload: len bytes]`.
//!
//! `crc` is CRC-32C (Castagnoli, the `crc32c` crate, hardware accelerated on x86-64 and
//! aarch64) computed over the four little-endian `len` bytes followed by the payload. Covering
//! `len` means a flipped length field is caught by the CRC, and an all-zero region (the header
//! `len = 0, crc = 0`, as left by preallocation or by a file size that reached the disk before
//! its data) is never a valid frame, while an empty payload still is (its CRC is
//! `crc32c([0, 0, 0, 0]) = 0x48674bc7`).

/// Bytes of the frame header (`len` + `crc`).
pub const HEADER_BYTES: usize = 8;

/// CRC-32C of a frame: over the little-endian payload length, then the payload.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` bytes (the log rejects such entries earlier).
pub fn frame_crc(payload: &[u8]) -> u32 {
    let len = u32::try_from(payload.len()).expect("frame payload fits in u32");
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload)
}

/// Size of the frame for a payload of `payload_len` bytes.
pub const fn encoded_len(payload_len: usize) -> usize {
    HEADER_BYTES + payload_len
}

/// Appends the frame of `payload` to `out`.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` bytes.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("frame payload fits in u32");
    out.reserve(encoded_len(payload.len()));
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame_crc(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Result of decoding the frame at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete frame whose CRC matches.
    Frame {
        /// The entry.
        payload: &'a [u8],
        /// Bytes the frame takes (header + payload).
        frame_bytes: usize,
    },
    /// The buffer ends inside the frame: `have` bytes present, `need` bytes required (8 while
    /// the header itself is short).
    Incomplete {
        /// Bytes present.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// A complete frame whose CRC does not match its length and payload.
    BadCrc {
        /// Length field as stored, bytes.
        len: u32,
        /// CRC as stored.
        stored: u32,
        /// CRC computed over the stored length and payload.
        computed: u32,
    },
}

/// Reads the `len` and `crc` fields of a header (`buf` must hold at least 8 bytes).
pub(crate) fn read_header(buf: &[u8]) -> (u32, u32) {
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    (len, crc)
}

/// Decodes the frame at the start of `buf` (bytes after the frame are ignored).
pub fn decode_frame(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < HEADER_BYTES {
        return Decoded::Incomplete {
            have: buf.len(),
            need: HEADER_BYTES,
        };
    }
    let (len, stored) = read_header(buf);
    let need = encoded_len(len as usize);
    if buf.len() < need {
        return Decoded::Incomplete {
            have: buf.len(),
            need,
        };
    }
    let payload = &buf[HEADER_BYTES..need];
    let computed = frame_crc(payload);
    if computed == stored {
        Decoded::Frame {
            payload,
            frame_bytes: need,
        }
    } else {
        Decoded::BadCrc {
            len,
            stored,
            computed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_frames_decode_back_to_their_payloads() {
        let payloads: [&[u8]; 4] = [b"", b"a", b"hello world", &[0u8; 1000]];
        let mut buf = Vec::new();
        for p in payloads {
            encode_frame(p, &mut buf);
        }
        let mut at = 0;
        for p in payloads {
            match decode_frame(&buf[at..]) {
                Decoded::Frame {
                    payload,
                    frame_bytes,
                } => {
                    assert_eq!(payload, p);
                    assert_eq!(frame_bytes, encoded_len(p.len()));
                    at += frame_bytes;
                }
                other => panic!("expected a frame, got {other:?}"),
            }
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn header_layout_is_length_then_crc_little_endian() {
        let mut buf = Vec::new();
        encode_frame(b"abc", &mut buf);
        assert_eq!(&buf[0..4], &3u32.to_le_bytes());
        assert_eq!(&buf[4..8], &frame_crc(b"abc").to_le_bytes());
        assert_eq!(&buf[8..], b"abc");
        // The CRC covers the length: it differs from the CRC of the payload alone.
        assert_ne!(frame_crc(b"abc"), crc32c::crc32c(b"abc"));
    }

    #[test]
    fn zero_filled_space_is_not_a_valid_frame() {
        assert_eq!(
            decode_frame(&[0u8; 64]),
            Decoded::BadCrc {
                len: 0,
                stored: 0,
                computed: frame_crc(b"")
            }
        );
        assert_eq!(frame_crc(b""), 0x4867_4bc7);
    }

    #[test]
    fn short_buffers_are_incomplete_and_flipped_bits_fail_the_crc() {
        let mut buf = Vec::new();
        encode_frame(b"payload", &mut buf);
        assert_eq!(
            decode_frame(&buf[..5]),
            Decoded::Incomplete { have: 5, need: 8 }
        );
        assert_eq!(
            decode_frame(&buf[..10]),
            Decoded::Incomplete { have: 10, need: 15 }
        );
        let mut flipped = buf.clone();
        flipped[9] ^= 0x10;
        assert!(matches!(decode_frame(&flipped), Decoded::BadCrc { .. }));
        let mut flipped_len = buf.clone();
        flipped_len[0] = 6; // shorter length, still complete
        assert!(matches!(decode_frame(&flipped_len), Decoded::BadCrc { .. }));
    }
}
