//! Field encryption of the card number (PAN) with AES-256-GCM (`ring`), with key ids and
//! rotation.
//!
//! # Sealed form (version 1)
//!
//! `0x01 || id_len (1 byte) || key id (id_len bytes, UTF-8) || nonce (12 bytes) || ciphertext
//! || tag (16 bytes)`. The associated data is the transaction id, so a sealed PAN cannot be
//! moved to another transaction. The nonce is 96 random bits from the operating system's CSPRNG
//! (`ring::rand::SystemRandom`) for every seal: two seals of the same PAN for the same
//! transaction differ, and a duplicated transaction id cannot repeat a nonce. (With random
//! nonces one key should seal fewer than 2^32 values, NIST SP 800-38D: rotate long before.)
//! The key id in the clear tells the opener which key to use; it is not secret.
//!
//! The earlier form (no version byte, nonce derived from the transaction id, the published
//! development key by default) is not read any more: records sealed before this version must
//! be re-produced (see `docs/security.md`).
//!
//! # Keys and keyrings
//!
//! A [`PanKey`] is 32 bytes with an id (1-64 characters of `A-Z a-z 0-9 . _ -`). A
//! [`PanKeyring`] holds one or more keys; its *current* key seals, every key opens. A keyring
//! file ([`PanKeyring::parse`]) has one key per line, `<key-id> <64 hex characters>`; blank
//! lines and lines starting with `#` are ignored; the first key is the current one unless
//! another is chosen ([`PanKeyring::with_current`]). Rotation: add the new key to the
//! workers' keyring first (as a second line), then make it the first line at the producers;
//! drop the old key once nothing sealed with it is still in flight.
//!
//! There is no default key: the binaries refuse to start without one ([`PanKeyArgs`]).

use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

/// Length of the authentication tag appended to the ciphertext, bytes.
pub const TAG_LEN: usize = 16;

/// First byte of the sealed form this version writes and reads.
pub const SEALED_VERSION: u8 = 1;

/// Longest key id, bytes.
pub const MAX_KEY_ID_LEN: usize = 64;

/// Errors of PAN encryption and key loading.
#[derive(Debug, thiserror::Error)]
pub enum PanError {
    /// The key was not 64 hex characters.
    #[error("PAN key must be 64 hex characters (32 bytes), got {0} characters")]
    BadKey(usize),
    /// A key id that is empty, too long or has other characters than `A-Z a-z 0-9 . _ -`.
    #[error("PAN key id {0:?} must be 1-64 characters of A-Z a-z 0-9 . _ -")]
    BadKeyId(String),
    /// A keyring file line that is not `<key-id> <64 hex characters>`, or a repeated id.
    #[error("{path}: line {line}: {reason}")]
    BadKeyring {
        /// The file (`<env>` for text not read from a file).
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A keyring file without any key.
    #[error("{0}: no key in the keyring (lines `<key-id> <64 hex characters>`)")]
    EmptyKeyring(String),
    /// The chosen current key id is not in the keyring.
    #[error("PAN key id {id:?} is not in the keyring (ids: {known})")]
    NoSuchKey {
        /// The wanted id.
        id: String,
        /// The ids of the keyring, comma separated.
        known: String,
    },
    /// The keyring file could not be read.
    #[error("cannot read PAN keyring {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The sealed value is not of a version this code reads (e.g. the unversioned form of
    /// earlier releases).
    #[error("sealed PAN has format version {0}, this build reads version 1 only")]
    UnsupportedVersion(u8),
    /// The sealed value names a key this keyring does not hold.
    #[error("sealed PAN uses key id {id:?}, which is not in this keyring (ids: {known})")]
    UnknownKey {
        /// The key id of the sealed value.
        id: String,
        /// The ids of the keyring, comma separated.
        known: String,
    },
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

/// Checks a key id (see the module docs). Errors: [`PanError::BadKeyId`].
pub fn check_key_id(id: &str) -> Result<(), PanError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PanError::BadKeyId(id.to_string()))
    }
}

impl PanKey {
    /// A key from 32 raw bytes.
    ///
    /// Panics when `id` is not a valid key id (see [`check_key_id`]); use
    /// [`PanKey::from_hex`] for ids from input.
    pub fn from_bytes(id: impl Into<String>, bytes: &[u8; 32]) -> Self {
        let id = id.into();
        check_key_id(&id).expect("valid PAN key id");
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256 key");
        Self {
            key: LessSafeKey::new(unbound),
            id,
        }
    }

    /// A key from 64 hex characters. Errors: [`PanError::BadKey`], [`PanError::BadKeyId`].
    pub fn from_hex(id: impl Into<String>, hex: &str) -> Result<Self, PanError> {
        let id = id.into();
        check_key_id(&id)?;
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

    /// A fixed, **published** key (id `dev-1`, SHA-256 of `"txpipe-dev-pan-key"`) for unit
    /// tests, benchmarks and synthetic training data only. The producer and worker binaries
    /// never use it: they refuse to start without a configured key.
    pub fn insecure_test_key() -> Self {
        let d = digest(&SHA256, b"txpipe-dev-pan-key");
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(d.as_ref());
        Self::from_bytes("dev-1", &bytes)
    }

    /// The 64 hex characters of [`PanKey::insecure_test_key`] (id `dev-1`), for tests that
    /// start binaries with `--pan-key-hex`.
    pub fn insecure_test_key_hex() -> String {
        digest(&SHA256, b"txpipe-dev-pan-key")
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The key id, written into every sealed value and `Transaction.key_id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext` for transaction `tx_id` with a fresh random nonce (the sealed form
    /// of the module docs).
    ///
    /// Panics if the operating system's random generator fails (there is no safe way on).
    pub fn seal(&self, tx_id: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the operating system's CSPRNG failed");
        let id = self.id.as_bytes();
        let head = 2 + id.len();
        let mut out = Vec::with_capacity(head + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(SEALED_VERSION);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(tx_id.as_bytes()),
                &mut out[head + NONCE_LEN..],
            )
            .expect("AES-GCM seal of a short buffer cannot fail");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a value sealed by this key for the same `tx_id`.
    ///
    /// Errors: [`PanError::UnsupportedVersion`], [`PanError::UnknownKey`] (sealed with
    /// another key id), [`PanError::Unauthentic`].
    pub fn open(&self, tx_id: &str, sealed: &[u8]) -> Result<Vec<u8>, PanError> {
        let (id, body) = split_sealed(sealed)?;
        if id != self.id {
            return Err(PanError::UnknownKey {
                id: id.to_string(),
                known: self.id.clone(),
            });
        }
        self.open_body(tx_id, body)
    }

    /// Opens `nonce || ciphertext || tag`.
    fn open_body(&self, tx_id: &str, body: &[u8]) -> Result<Vec<u8>, PanError> {
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(PanError::Unauthentic);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&body[..NONCE_LEN]);
        let mut buf = body[NONCE_LEN..].to_vec();
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

/// The key id of a sealed value and the rest (`nonce || ciphertext || tag`).
///
/// Errors: [`PanError::UnsupportedVersion`] for another first byte; [`PanError::Unauthentic`]
/// when too short or the id is not UTF-8.
pub fn split_sealed(sealed: &[u8]) -> Result<(&str, &[u8]), PanError> {
    let (&version, rest) = sealed.split_first().ok_or(PanError::Unauthentic)?;
    if version != SEALED_VERSION {
        return Err(PanError::UnsupportedVersion(version));
    }
    let (&len, rest) = rest.split_first().ok_or(PanError::Unauthentic)?;
    let len = len as usize;
    if rest.len() < len {
        return Err(PanError::Unauthentic);
    }
    let id = std::str::from_utf8(&rest[..len]).map_err(|_| PanError::Unauthentic)?;
    Ok((id, &rest[len..]))
}

/// A random key as 64 hex characters, from the operating system's CSPRNG (for generated
/// keyring files, e.g. `txpipe run`'s).
///
/// Panics if the random generator fails.
pub fn random_key_hex() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's CSPRNG failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One or more keys: the current one seals, all open (see the module docs).
#[derive(Debug)]
pub struct PanKeyring {
    /// Never empty; ids unique.
    keys: Vec<PanKey>,
    current: usize,
}

impl From<PanKey> for PanKeyring {
    fn from(key: PanKey) -> Self {
        Self {
            keys: vec![key],
            current: 0,
        }
    }
}

impl PanKeyring {
    /// A keyring of `keys`, the first current.
    ///
    /// Errors: [`PanError::EmptyKeyring`] without keys, [`PanError::BadKeyring`] for a
    /// repeated id.
    pub fn new(keys: Vec<PanKey>) -> Result<Self, PanError> {
        if keys.is_empty() {
            return Err(PanError::EmptyKeyring("<keys>".into()));
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(PanError::BadKeyring {
                    path: "<keys>".into(),
                    line: i + 1,
                    reason: format!("key id {:?} appears twice", k.id),
                });
            }
        }
        Ok(Self { keys, current: 0 })
    }

    /// Parses keyring text (see the module docs); `path` names it in errors.
    ///
    /// Errors: [`PanError::BadKeyring`] naming the line (bad id, bad hex, extra fields,
    /// repeated id; the key itself is never echoed), [`PanError::EmptyKeyring`].
    pub fn parse(text: &str, path: &str) -> Result<Self, PanError> {
        let mut keys: Vec<PanKey> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let bad = |reason: String| PanError::BadKeyring {
                path: path.to_string(),
                line: line_no,
                reason,
            };
            let mut fields = t.split_whitespace();
            let (Some(id), Some(hex), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(bad("expected `<key-id> <64 hex characters>`".into()));
            };
            let key = PanKey::from_hex(id, hex).map_err(|e| bad(e.to_string()))?;
            if keys.iter().any(|k| k.id == key.id) {
                return Err(bad(format!("key id {id:?} appears twice")));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(PanError::EmptyKeyring(path.to_string()));
        }
        Ok(Self { keys, current: 0 })
    }

    /// Reads and parses a keyring file.
    ///
    /// Errors: [`PanError::Io`], and those of [`PanKeyring::parse`].
    pub fn from_file(path: &Path) -> Result<Self, PanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PanError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Makes key `id` the current (sealing) key.
    ///
    /// Errors: [`PanError::NoSuchKey`].
    pub fn with_current(mut self, id: &str) -> Result<Self, PanError> {
        match self.keys.iter().position(|k| k.id == id) {
            Some(i) => {
                self.current = i;
                Ok(self)
            }
            None => Err(PanError::NoSuchKey {
                id: id.to_string(),
                known: self.ids(),
            }),
        }
    }

    /// The current key (the one [`PanKeyring::seal`] uses).
    pub fn current(&self) -> &PanKey {
        &self.keys[self.current]
    }

    /// The current key, the others dropped (a producer only seals).
    pub fn into_current(mut self) -> PanKey {
        self.keys.swap_remove(self.current)
    }

    /// The ids in file order, comma separated.
    pub fn ids(&self) -> String {
        self.keys
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Seals with the current key ([`PanKey::seal`]).
    pub fn seal(&self, tx_id: &str, plaintext: &[u8]) -> Vec<u8> {
        self.current().seal(tx_id, plaintext)
    }

    /// The key a sealed value names.
    ///
    /// Errors: [`PanError::UnsupportedVersion`], [`PanError::UnknownKey`],
    /// [`PanError::Unauthentic`] (malformed header).
    pub fn key_for(&self, sealed: &[u8]) -> Result<&PanKey, PanError> {
        let (id, _) = split_sealed(sealed)?;
        self.keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| PanError::UnknownKey {
                id: id.to_string(),
                known: self.ids(),
            })
    }

    /// Opens a value sealed by any key of the keyring for the same `tx_id`.
    ///
    /// Errors: those of [`PanKeyring::key_for`], then [`PanError::Unauthentic`].
    pub fn open(&self, tx_id: &str, sealed: &[u8]) -> Result<Vec<u8>, PanError> {
        let key = self.key_for(sealed)?;
        let (_, body) = split_sealed(sealed)?;
        key.open_body(tx_id, body)
    }
}

/// Where the producer and worker binaries get their PAN keys: flags, each also an
/// environment variable. Exactly one of `--pan-key-file` and `--pan-key-hex`; without either
/// the binaries refuse to start ([`PanKeyArgs::keyring`]).
#[cfg(feature = "clap")]
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct PanKeyArgs {
    /// PAN keyring file (e.g. mounted from a Kubernetes Secret): lines `<key-id> <64 hex
    /// characters>`; the first key (or --pan-key-id) seals, every key opens. Required unless
    /// --pan-key-hex is given.
    #[arg(long, env = "TXPIPE_PAN_KEY_FILE", conflicts_with = "pan_key_hex")]
    pub pan_key_file: Option<PathBuf>,
    /// One PAN key, 64 hex characters, with id --pan-key-id (default k1). Required unless
    /// --pan-key-file is given.
    #[arg(long, env = "TXPIPE_PAN_KEY", hide_env_values = true)]
    pub pan_key_hex: Option<String>,
    /// Id of the current PAN key: the key of --pan-key-file that seals (default: its first
    /// line), or the id of --pan-key-hex (default: k1).
    #[arg(long, env = "TXPIPE_PAN_KEY_ID")]
    pub pan_key_id: Option<String>,
}

/// What the binaries say when no key is configured.
pub const NO_PAN_KEY: &str = "no PAN key configured: give --pan-key-file (env TXPIPE_PAN_KEY_FILE), a keyring file with lines `<key-id> <64 hex characters>`, or --pan-key-hex (env TXPIPE_PAN_KEY); there is no default key";

#[cfg(feature = "clap")]
impl PanKeyArgs {
    /// The keyring of the flags.
    ///
    /// Errors: a message naming the flag: [`NO_PAN_KEY`] without a key, or the
    /// [`PanError`] of reading or parsing it.
    pub fn keyring(&self) -> Result<PanKeyring, String> {
        match (&self.pan_key_file, &self.pan_key_hex) {
            (Some(path), _) => {
                let ring =
                    PanKeyring::from_file(path).map_err(|e| format!("--pan-key-file: {e}"))?;
                match &self.pan_key_id {
                    Some(id) => ring
                        .with_current(id)
                        .map_err(|e| format!("--pan-key-id: {e}")),
                    None => Ok(ring),
                }
            }
            (None, Some(hex)) => {
                let id = self.pan_key_id.as_deref().unwrap_or("k1");
                PanKey::from_hex(id, hex)
                    .map(PanKeyring::from)
                    .map_err(|e| format!("--pan-key-hex / TXPIPE_PAN_KEY: {e}"))
            }
            (None, None) => Err(NO_PAN_KEY.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> PanKeyring {
        PanKeyring::parse(text, "keys").unwrap()
    }

    #[test]
    fn sealed_pan_opens_only_with_the_same_key_and_transaction_id() {
        let k = PanKey::insecure_test_key();
        let sealed = k.seal("tx-1", b"4111111111111111");
        assert_eq!(sealed.len(), 2 + 5 + 12 + 16 + 16);
        assert_eq!(&sealed[..7], b"\x01\x05dev-1");
        assert_eq!(k.open("tx-1", &sealed).unwrap(), b"4111111111111111");
        assert!(matches!(
            k.open("tx-2", &sealed),
            Err(PanError::Unauthentic)
        ));
        // Same id, other bytes: authentication fails.
        let other = PanKey::from_hex("dev-1", &"ab".repeat(32)).unwrap();
        assert!(matches!(
            other.open("tx-1", &sealed),
            Err(PanError::Unauthentic)
        ));
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(k.open("tx-1", &tampered).is_err());
    }

    #[test]
    fn two_seals_of_the_same_pan_and_transaction_id_differ() {
        let k = PanKey::insecure_test_key();
        let a = k.seal("tx-1", b"4111111111111111");
        let b = k.seal("tx-1", b"4111111111111111");
        assert_ne!(a, b);
        assert_ne!(a[7..19], b[7..19], "nonces repeat");
        assert_eq!(k.open("tx-1", &a).unwrap(), k.open("tx-1", &b).unwrap());
    }

    #[test]
    fn a_keyring_seals_with_its_current_key_and_opens_with_any_listed_key() {
        let (h1, h2) = ("11".repeat(32), "22".repeat(32));
        let old = ring(&format!("k1 {h1}\n"));
        let producer = ring(&format!("# rotated\nk2 {h2}\nk1 {h1}\n"));
        let worker = ring(&format!("k1 {h1}\n\nk2 {h2}\n"));
        assert_eq!(producer.current().id(), "k2");
        let by_k2 = producer.seal("tx-1", b"4111");
        let by_k1 = old.seal("tx-2", b"5500");
        assert_eq!(worker.open("tx-1", &by_k2).unwrap(), b"4111");
        assert_eq!(worker.open("tx-2", &by_k1).unwrap(), b"5500");
        match old.open("tx-1", &by_k2) {
            Err(e @ PanError::UnknownKey { .. }) => assert_eq!(
                e.to_string(),
                "sealed PAN uses key id \"k2\", which is not in this keyring (ids: k1)"
            ),
            other => panic!("{other:?}"),
        }
        let chosen = ring(&format!("k2 {h2}\nk1 {h1}\n"))
            .with_current("k1")
            .unwrap();
        assert_eq!(chosen.current().id(), "k1");
        assert!(ring(&format!("k1 {h1}\n")).with_current("k9").is_err());
    }

    #[test]
    fn keyring_errors_name_the_line_and_never_echo_a_key() {
        let h = "ab".repeat(32);
        let e = PanKeyring::parse(&format!("k1 {h}\nk1 {h}\n"), "f").unwrap_err();
        assert_eq!(e.to_string(), "f: line 2: key id \"k1\" appears twice");
        let e = PanKeyring::parse("k1 abc\n", "f").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("f: line 1: PAN key must be 64 hex"),
            "{e}"
        );
        let e = PanKeyring::parse(&h, "f").unwrap_err();
        assert!(e.to_string().contains("line 1: expected"), "{e}");
        assert!(!e.to_string().contains(&h));
        let e = PanKeyring::parse(&format!("bad/id {h}\n"), "f").unwrap_err();
        assert!(e.to_string().contains("A-Z a-z 0-9"), "{e}");
        assert!(matches!(
            PanKeyring::parse("# none\n\n", "f"),
            Err(PanError::EmptyKeyring(_))
        ));
    }

    #[test]
    fn the_unversioned_form_of_earlier_releases_is_refused_by_name() {
        let k = PanKey::insecure_test_key();
        let mut old = vec![0x9a; 12 + 16 + 16];
        old[0] = 0x9a;
        assert!(matches!(
            PanKeyring::from(k).open("tx-1", &old),
            Err(PanError::UnsupportedVersion(0x9a))
        ));
    }

    #[test]
    fn bad_hex_keys_are_rejected_with_their_length() {
        assert!(matches!(
            PanKey::from_hex("x", "abc"),
            Err(PanError::BadKey(3))
        ));
        assert!(PanKey::from_hex("x", &"zz".repeat(32)).is_err());
        assert_eq!(random_key_hex().len(), 64);
        assert_ne!(random_key_hex(), random_key_hex());
    }
}
