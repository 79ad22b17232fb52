//! Field encryption of the card number (PAN) with AES-256-GCM (`ring`).
//!
//! Sealed form: `nonce (12 bytes) || ciphertext || tag (16 bytes)`, associated data = the
//! transaction id, so a sealed PAN cannot be moved to another transaction. The nonce is the
//! first 12 bytes of SHA-256(`"txpipe-pan-nonce" || transaction id`): unique per transaction
//! id (ids are unique) and deterministic, so a seeded generator produces identical bytes on
//! every run. A key must never seal two different PANs under the same transaction id.
//!
//! Keys are 32 bytes, given as 64 hex characters (`TXPIPE_PAN_KEY` in the binaries). Without
//! one, [`PanKey::dev`] derives a well-known development key: never use it for real data.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};

/// Length of the authentication tag appended to the ciphertext, bytes.
pub const TAG_LEN: usize = 16;

/// Errors of PAN encryption.
#[derive(Debug, thiserror::Error)]
pub enum PanError {
    /// The key was not 64 hex characters.
    #[error("PAN key must be 64 hex characters (32 bytes), got {0} characters")]
    BadKey(usize),
    /// The sealed value was too short, tampered with, or sealed with another key or id.
    #[error("sealed PAN failed authentication (wrong key, wrong transaction id, or corrupted)")]
    Unauthentic,
}

/// An AES-256-GCM data-encryption key with its id.
pub struct PanKey {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for PanKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PanKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(id: impl Into<String>, bytes: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256 key");
        Self {
            key: LessSafeKey::new(unbound),
            id: id.into(),
        }
    }

    /// A key from 64 hex characters. Errors: [`PanError::BadKey`].
    pub fn from_hex(id: impl Into<String>, hex: &str) -> Result<Self, PanError> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PanError::BadKey(hex.len()));
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| PanError::BadKey(hex.len()))?;
        }
        Ok(Self::from_bytes(id, &bytes))
    }

    /// The well-known development key (id `dev-1`): SHA-256 of `"txpipe-dev-pan-key"`.
    pub fn dev() -> Self {
        let d = digest(&SHA256, b"txpipe-dev-pan-key");
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(d.as_ref());
        Self::from_bytes("dev-1", &bytes)
    }

    /// The key id carried in `Transaction.key_id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext` for transaction `tx_id`. Output: nonce || ciphertext || tag.
    pub fn seal(&self, tx_id: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce = nonce_for(tx_id);
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(tx_id.as_bytes()),
                &mut out[NONCE_LEN..],
            )
            .expect("AES-GCM seal of a short buffer cannot fail");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a value produced by [`Self::seal`] for the same `tx_id`. Errors:
    /// [`PanError::Unauthentic`].
    pub fn open(&self, tx_id: &str, sealed: &[u8]) -> Result<Vec<u8>, PanError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(PanError::Unauthentic);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(tx_id.as_bytes()),
                &mut buf,
            )
            .map_err(|_| PanError::Unauthentic)?;
        Ok(plain.to_vec())
    }
}

/// The deterministic nonce for `tx_id` (see module docs).
pub fn nonce_for(tx_id: &str) -> [u8; NONCE_LEN] {
    let mut ctx = ring::digest::Context::new(&SHA256);
    ctx.update(b"txpipe-pan-nonce");
    ctx.update(tx_id.as_bytes());
    let d = ctx.finish();
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(&d.as_ref()[..NONCE_LEN]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_pan_opens_only_with_the_same_key_and_transaction_id() {
        let k = PanKey::dev();
        let sealed = k.seal("tx-1", b"4111111111111111");
        assert_eq!(sealed.len(), 12 + 16 + 16);
        assert_eq!(k.open("tx-1", &sealed).unwrap(), b"4111111111111111");
        assert!(k.open("tx-2", &sealed).is_err());
        let other = PanKey::from_hex("k2", &"ab".repeat(32)).unwrap();
        assert!(other.open("tx-1", &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered[14] ^= 1;
        assert!(k.open("tx-1", &tampered).is_err());
    }

    #[test]
    fn bad_hex_keys_are_rejected_with_their_length() {
        assert!(matches!(
            PanKey::from_hex("x", "abc"),
            Err(PanError::BadKey(3))
        ));
        assert!(PanKey::from_hex("x", &"zz".repeat(32)).is_err());
    }
}
