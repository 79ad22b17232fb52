//! The cryptography stage: PAN decryption plus a fixed number of AES-256-GCM seal+open rounds.
//!
//! Seed 000 spent most of its per-transaction CPU in 100 rounds of encryption and decryption,
//! standing in for the HSM/tokenisation work of a real authorisation path. We keep that cost,
//! configurable with `--crypto-rounds`, using `ring`'s AES-256-GCM: `ring` picks its AES-NI /
//! CLMUL assembly at run time (CPU feature detection), so the cost is the same whatever
//! `RUSTFLAGS`/target features the binary was built with; RustCrypto's `aes-gcm` is 2-4x slower
//! without compile-time target features. One round seals a fixed 32-byte block
//! (the PAN, zero padded) with the transaction id as associated data, then opens it again; the
//! first tag byte is folded into the block so every round depends on the previous one and
//! none can be optimised away.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};

/// Size of the block sealed and opened each round, bytes.
pub const BLOCK_LEN: usize = 32;

/// The extra seal+open work of the cryptography stage.
pub struct CryptoRounds {
    key: LessSafeKey,
    rounds: u32,
}

impl std::fmt::Debug for CryptoRounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoRounds")
            .field("rounds", &self.rounds)
            .finish_non_exhaustive()
    }
}

impl CryptoRounds {
    /// `rounds` seal+open rounds per transaction under a fixed stage key
    /// (SHA-256 of `"txpipe-worker-crypto-rounds"`; the output is discarded, so the key needs
    /// no secrecy).
    pub fn new(rounds: u32) -> Self {
        let d = digest(&SHA256, b"txpipe-worker-crypto-rounds");
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, d.as_ref()).expect("32-byte key"));
        Self { key, rounds }
    }

    /// Rounds per transaction.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Runs the rounds over `pan` (truncated or zero padded to [`BLOCK_LEN`]) with `tx_id` as
    /// associated data. Returns a checksum of the tags so the work is observable.
    pub fn run(&self, tx_id: &str, pan: &[u8]) -> u64 {
        let mut block = [0u8; BLOCK_LEN + 16];
        let n = pan.len().min(BLOCK_LEN);
        block[..n].copy_from_slice(&pan[..n]);
        let mut checksum = 0u64;
        for round in 0..self.rounds {
            let mut nonce = [0u8; NONCE_LEN];
            nonce[..4].copy_from_slice(&round.to_le_bytes());
            let (data, tag_out) = block.split_at_mut(BLOCK_LEN);
            let tag = self
                .key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(tx_id.as_bytes()),
                    data,
                )
                .expect("sealing a 32-byte block cannot fail");
            tag_out.copy_from_slice(tag.as_ref());
            let t0 = tag.as_ref()[0];
            checksum = checksum.rotate_left(7) ^ u64::from(t0);
            let opened = self
                .key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(tx_id.as_bytes()),
                    &mut block,
                )
                .expect("opening what was just sealed cannot fail");
            opened[round as usize % BLOCK_LEN] ^= t0;
        }
        std::hint::black_box(checksum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypto_rounds_are_deterministic_and_depend_on_the_input() {
        let c = CryptoRounds::new(10);
        let a = c.run("tx-1", b"4111111111111111");
        assert_eq!(a, c.run("tx-1", b"4111111111111111"));
        assert_ne!(a, c.run("tx-2", b"4111111111111111"));
        assert_ne!(a, c.run("tx-1", b"4111111111111112"));
        assert_eq!(CryptoRounds::new(0).run("tx-1", b"x"), 0);
    }
}
