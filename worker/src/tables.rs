//! Read-only reference tables used by the profile-lookup stage.
//!
//! - [`RiskTable`]: a fixed-size open-addressing hash table from a string key (merchant id,
//!   terminal id, BIN) to a risk value in 0.0-1.0. Keys are hashed with 64-bit FNV-1a
//!   (Fowler, Noll, Vo; <http://www.isthe.com/chongo/tech/comp/fnv/>), which is stable across
//!   builds and platforms, unlike `std`'s randomised SipHash. Every lookup probes at most
//!   [`RiskTable::MAX_PROBES`] slots and always hashes the whole key, so its cost depends only
//!   on the key length.
//! - [`bin_country`]: issuing country of a card from its BIN (first 6 PAN digits).
//! - [`mcc_risk`]: risk class of an ISO 18245 merchant category code.
//! - [`currency_to_eur_minor`]: static exchange rates to compare amounts across currencies.

use std::collections::BTreeMap;

/// 64-bit FNV-1a hash of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A fixed-size, read-only hash table from key to risk (0.0-1.0), with a default for absent
/// keys. Capacity is a power of two at least twice the number of entries (load factor <= 0.5)
/// and at least 1024 slots.
#[derive(Debug, Clone)]
pub struct RiskTable {
    /// (key hash, risk); hash 0 marks an empty slot.
    slots: Vec<(u64, f32)>,
    mask: usize,
    default: f32,
    len: usize,
}

impl RiskTable {
    /// Probes per lookup, at most (linear probing).
    pub const MAX_PROBES: usize = 8;

    /// Builds a table from `(key, risk)` pairs; absent keys read as `default`. A key whose
    /// probe sequence is full after [`Self::MAX_PROBES`] slots is dropped (reads as default);
    /// with load factor <= 0.5 this does not happen in practice.
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, f32)>, default: f32) -> Self {
        let entries: Vec<(u64, f32)> = entries
            .into_iter()
            .map(|(k, v)| (fnv1a64(k.as_bytes()).max(1), v))
            .collect();
        let cap = (entries.len() * 2).next_power_of_two().max(1024);
        let mut slots = vec![(0u64, 0f32); cap];
        let mask = cap - 1;
        let mut len = 0;
        for (h, v) in entries {
            for p in 0..Self::MAX_PROBES {
                let slot = &mut slots[(h as usize).wrapping_add(p) & mask];
                if slot.0 == 0 || slot.0 == h {
                    if slot.0 == 0 {
                        len += 1;
                    }
                    *slot = (h, v);
                    break;
                }
            }
        }
        Self {
            slots,
            mask,
            default,
            len,
        }
    }

    /// An empty table where every key reads as `default`.
    pub fn empty(default: f32) -> Self {
        Self::new(std::iter::empty(), default)
    }

    /// Risk of `key`, or the default. Always probes exactly [`Self::MAX_PROBES`] slots (no
    /// early exit), so the cost is fixed.
    pub fn get(&self, key: &str) -> f32 {
        let h = fnv1a64(key.as_bytes()).max(1);
        let mut found = self.default;
        for p in 0..Self::MAX_PROBES {
            let slot = self.slots[(h as usize).wrapping_add(p) & self.mask];
            if slot.0 == h {
                found = slot.1;
            }
        }
        found
    }

    /// Number of stored keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Risk for absent keys.
    pub fn default_risk(&self) -> f32 {
        self.default
    }
}

/// Builds a [`RiskTable`] from a map (as stored in `model.json`).
pub fn table_from_map(map: &BTreeMap<String, f32>, default: f32) -> RiskTable {
    RiskTable::new(map.iter().map(|(k, v)| (k.as_str(), *v)), default)
}

/// Issuer BINs (first six PAN digits as a number) and their ISO 3166-1 alpha-2 country,
/// sorted by BIN. A copy of the generator's issuer table (`txpipe_producer::tables::BINS`);
/// the `generator_agreement` test checks they agree. Real deployments load a licensed BIN
/// file instead.
pub static BINS: &[(u32, &str)] = &[
    (371449, "US"),
    (374288, "GB"),
    (376011, "FR"),
    (402360, "IT"),
    (404159, "CH"),
    (414720, "US"),
    (416598, "DE"),
    (426510, "IE"),
    (433316, "PT"),
    (446291, "GB"),
    (450875, "CA"),
    (454617, "ES"),
    (457173, "SE"),
    (465859, "NL"),
    (479213, "BE"),
    (497010, "FR"),
    (497355, "FR"),
    (513691, "FR"),
    (517805, "BE"),
    (520306, "PL"),
    (522411, "DE"),
    (532510, "IT"),
    (535110, "DE"),
    (539983, "NL"),
    (540007, "ES"),
    (542418, "US"),
    (552188, "GB"),
];

/// Issuing country of a BIN (the first six PAN digits as a number), or `None` for an unknown
/// BIN. A binary search over [`BINS`]: fixed cost (log2 of the table size).
pub fn bin_country(bin: u32) -> Option<&'static str> {
    let i = BINS.partition_point(|r| r.0 < bin);
    BINS.get(i).filter(|r| r.0 == bin).map(|r| r.1)
}

/// Merchant category codes treated as high risk, with their risk weight (0.0-1.0). Sources:
/// card-scheme "high-brand-risk" MCC lists (Visa/Mastercard) and ISO 18245 descriptions.
pub static RISKY_MCCS: &[(u32, f32, &str)] = &[
    (4829, 0.9, "wire transfer / money orders"),
    (6051, 0.9, "quasi-cash, crypto currency"),
    (7995, 0.8, "betting, gambling"),
    (5967, 0.7, "direct marketing, inbound teleservices"),
    (5732, 0.5, "electronics stores"),
    (5944, 0.6, "jewelry, watches"),
    (6012, 0.4, "financial institutions, merchandise"),
    (5816, 0.5, "digital goods, games"),
    (4814, 0.4, "telecommunication services, prepaid"),
];

/// Risk weight of an MCC: the [`RISKY_MCCS`] weight, or 0.0. A direct-indexed array of 10,000
/// entries, so the cost is one load.
pub fn mcc_risk(mcc: u32) -> f32 {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = vec![0.0f32; 10_000];
        for &(m, r, _) in RISKY_MCCS {
            t[m as usize] = r;
        }
        t
    });
    t[(mcc as usize).min(9_999)]
}

/// Static exchange rates: (ISO 4217 code, minor-unit exponent, EUR per major unit). The
/// generator's fixed rates (`txpipe_producer::tables::COUNTRIES`, units per EUR, inverted
/// here) plus JPY; they only need to put amounts on one scale.
pub static CURRENCIES: &[(&str, u32, f64)] = &[
    ("EUR", 2, 1.0),
    ("GBP", 2, 1.17647),
    ("CHF", 2, 1.05263),
    ("SEK", 2, 0.0869565),
    ("PLN", 2, 0.232558),
    ("USD", 2, 0.925926),
    ("CAD", 2, 0.680272),
    ("MXN", 2, 0.0540541),
    ("BRL", 2, 0.169492),
    ("INR", 2, 0.0111111),
    ("CNY", 2, 0.128205),
    ("SGD", 2, 0.689655),
    ("THB", 2, 0.0263158),
    ("AED", 2, 0.251889),
    ("TRY", 2, 0.0285714),
    ("NGN", 2, 0.000625),
    ("ZAR", 2, 0.05),
    ("AUD", 2, 0.606061),
    ("JPY", 0, 0.0062),
];

/// Converts `amount_minor` in `currency` to EUR cents. Unknown currencies are taken as
/// 2-decimal EUR-equivalent. Scans the whole [`CURRENCIES`] table (fixed cost).
pub fn currency_to_eur_minor(amount_minor: i64, currency: &str) -> f64 {
    let mut exp = 2u32;
    let mut rate = 1.0f64;
    for &(code, e, r) in CURRENCIES {
        if code == currency {
            exp = e;
            rate = r;
        }
    }
    // EUR cents = minor / 10^exp * rate * 100
    amount_minor as f64 * rate * 100.0 / 10f64.powi(exp as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_table_returns_stored_values_and_default_for_absent_keys() {
        let t = RiskTable::new([("term-1", 0.9), ("term-2", 0.1)], 0.02);
        assert_eq!(t.get("term-1"), 0.9);
        assert_eq!(t.get("term-2"), 0.1);
        assert_eq!(t.get("term-3"), 0.02);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn risk_table_holds_many_keys_without_losing_any() {
        let keys: Vec<String> = (0..5000).map(|i| format!("m-{i:06}")).collect();
        let t = RiskTable::new(keys.iter().map(|k| (k.as_str(), 0.5)), 0.0);
        assert_eq!(t.len(), 5000);
        assert!(keys.iter().all(|k| t.get(k) == 0.5));
    }

    #[test]
    fn fnv1a_matches_the_published_test_vector() {
        // FNV-1a 64 of "a" from the reference test suite.
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn bin_country_finds_known_bins_and_rejects_unknown_ones() {
        assert!(
            BINS.windows(2).all(|w| w[0].0 < w[1].0),
            "BINS sorted and unique"
        );
        assert_eq!(bin_country(497010), Some("FR"));
        assert_eq!(bin_country(446291), Some("GB"));
        assert_eq!(bin_country(371449), Some("US"));
        assert_eq!(bin_country(411111), None);
        assert_eq!(bin_country(0), None);
        assert_eq!(bin_country(999999), None);
    }

    #[test]
    fn mcc_risk_flags_wire_transfers_and_not_groceries() {
        assert!(mcc_risk(4829) > 0.8);
        assert_eq!(mcc_risk(5411), 0.0);
        assert_eq!(mcc_risk(123_456), 0.0);
    }

    #[test]
    fn currency_conversion_respects_minor_unit_exponents() {
        assert_eq!(currency_to_eur_minor(10_000, "EUR"), 10_000.0);
        assert!((currency_to_eur_minor(10_000, "JPY") - 6_200.0).abs() < 1e-6);
        assert_eq!(currency_to_eur_minor(500, "XXX"), 500.0);
    }
}
