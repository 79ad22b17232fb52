//! Feature-set fingerprints for pre-featurised transactions (`Transaction.feature_set`).
//!
//! A data set published as feature vectors (the ULB credit-card data: `V1`..`V28`, `Amount`)
//! reaches the workers as `Transaction.features`, a bare `repeated float`. The producer stamps
//! every such transaction with the fingerprint of its feature column names, and a worker's
//! vector model carries the names it was trained on: the worker scores the transaction only
//! when both fingerprints are equal, so a file whose columns are reordered, renamed or missing
//! is rejected (nacked, then dead-lettered) instead of being scored as garbage.

use ring::digest;

/// Prefix of every fingerprint.
pub const PREFIX: &str = "fs-";

/// Fingerprint of an ordered list of feature names: `"fs-"` followed by the first 8 bytes
/// (16 lowercase hex digits) of SHA-256 over the names, each followed by a `\n` byte. Order
/// and case matter; surrounding whitespace of a name does not (it is trimmed).
///
/// ```
/// let a = txpipe_client::features::fingerprint(["V1", "V2", "Amount"]);
/// assert!(a.starts_with("fs-") && a.len() == 19);
/// assert_ne!(a, txpipe_client::features::fingerprint(["V2", "V1", "Amount"]));
/// ```
pub fn fingerprint<I, S>(names: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut ctx = digest::Context::new(&digest::SHA256);
    for n in names {
        ctx.update(n.as_ref().trim().as_bytes());
        ctx.update(b"\n");
    }
    let d = ctx.finish();
    let mut out = String::with_capacity(PREFIX.len() + 16);
    out.push_str(PREFIX);
    for b in &d.as_ref()[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_order_sensitive() {
        // `printf 'a\nb\n' | sha256sum` starts with 911169ddaaf146af.
        let expected = "fs-911169ddaaf146af";
        assert_eq!(fingerprint(["a", "b"]), expected);
        assert_eq!(fingerprint([" a ", "b"]), expected);
        assert_ne!(fingerprint(["b", "a"]), expected);
        assert_ne!(fingerprint(["a"]), fingerprint(["a", ""]));
    }
}
