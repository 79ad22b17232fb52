//! Static reference tables the generator draws from: countries, issuer BINs and merchant
//! category codes (MCCs).
//!
//! The worker's risk tables should agree with these (it may depend on this module or keep its
//! own copies): [`bin_country`] maps a PAN's first six digits to the issuing country,
//! [`mcc_info`] gives an MCC's category, and [`RISKY_MCCS`] lists the categories the
//! `stolen_card_night` scenario targets.
//!
//! The BINs are invented but follow the real brand ranges (Visa `4`, Mastercard `51`-`55`,
//! American Express `34`/`37`, ISO/IEC 7812 and the brands' published ranges); none is claimed to
//! belong to a real issuer. Fixed exchange rates and UTC offsets (no daylight saving) are
//! round figures, good enough for a simulator. MCC codes follow ISO 18245; the category names
//! and spending medians are modelled on Sparkov's categories (grocery_pos, gas_transport,
//! shopping_net, misc_net, travel, ...) with medians chosen by us.

/// Geographic region, used to decide what "distant" means for `impossible_travel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    /// European Union, United Kingdom, Switzerland, Norway.
    Europe,
    /// United States, Canada, Mexico.
    NorthAmerica,
    /// South America.
    SouthAmerica,
    /// Asia and the Middle East.
    Asia,
    /// Africa.
    Africa,
    /// Australia and New Zealand.
    Oceania,
}

/// One country.
#[derive(Debug, Clone, Copy)]
pub struct Country {
    /// ISO 3166-1 alpha-2 code.
    pub code: &'static str,
    /// ISO 4217 currency (every currency here has 2 minor digits).
    pub currency: &'static str,
    /// Units of `currency` per euro (fixed, rounded).
    pub per_eur: f64,
    /// Standard-time offset from UTC, whole hours.
    pub utc_offset_h: i32,
    /// Region.
    pub region: Region,
    /// Relative share of cardholders living here (the simulated issuer portfolio is European).
    pub cardholder_weight: f64,
    /// Relative share of merchants located here.
    pub merchant_weight: f64,
    /// Whether this is a higher-risk origin for card-not-present fraud in the simulator.
    pub high_risk: bool,
}

macro_rules! country {
    ($code:literal, $cur:literal, $fx:literal, $off:literal, $reg:ident, $cw:literal, $mw:literal, $hr:literal) => {
        Country {
            code: $code,
            currency: $cur,
            per_eur: $fx,
            utc_offset_h: $off,
            region: Region::$reg,
            cardholder_weight: $cw,
            merchant_weight: $mw,
            high_risk: $hr,
        }
    };
}

/// Countries of cardholders and merchants.
pub const COUNTRIES: &[Country] = &[
    country!("FR", "EUR", 1.0, 1, Europe, 25.0, 20.0, false),
    country!("DE", "EUR", 1.0, 1, Europe, 20.0, 16.0, false),
    country!("ES", "EUR", 1.0, 1, Europe, 10.0, 9.0, false),
    country!("IT", "EUR", 1.0, 1, Europe, 10.0, 9.0, false),
    country!("NL", "EUR", 1.0, 1, Europe, 6.0, 5.0, false),
    country!("BE", "EUR", 1.0, 1, Europe, 5.0, 4.0, false),
    country!("PT", "EUR", 1.0, 0, Europe, 3.0, 3.0, false),
    country!("IE", "EUR", 1.0, 0, Europe, 2.0, 2.0, false),
    country!("GB", "GBP", 0.85, 0, Europe, 8.0, 8.0, false),
    country!("CH", "CHF", 0.95, 1, Europe, 2.0, 2.0, false),
    country!("SE", "SEK", 11.5, 1, Europe, 2.0, 2.0, false),
    country!("PL", "PLN", 4.3, 1, Europe, 3.0, 3.0, false),
    country!("US", "USD", 1.08, -5, NorthAmerica, 3.0, 8.0, false),
    country!("CA", "CAD", 1.47, -5, NorthAmerica, 0.5, 1.0, false),
    country!("MX", "MXN", 18.5, -6, NorthAmerica, 0.0, 0.8, true),
    country!("BR", "BRL", 5.9, -3, SouthAmerica, 0.0, 0.8, true),
    country!("IN", "INR", 90.0, 5, Asia, 0.0, 0.8, true),
    country!("CN", "CNY", 7.8, 8, Asia, 0.0, 1.5, true),
    country!("SG", "SGD", 1.45, 8, Asia, 0.0, 0.6, false),
    country!("TH", "THB", 38.0, 7, Asia, 0.0, 0.6, false),
    country!("AE", "AED", 3.97, 4, Asia, 0.0, 0.6, false),
    country!("TR", "TRY", 35.0, 3, Asia, 0.0, 0.8, true),
    country!("NG", "NGN", 1600.0, 1, Africa, 0.0, 0.4, true),
    country!("ZA", "ZAR", 20.0, 2, Africa, 0.0, 0.4, false),
    country!("AU", "AUD", 1.65, 10, Oceania, 0.0, 0.8, false),
];

/// The country with ISO code `code`.
pub fn country(code: &str) -> Option<&'static Country> {
    COUNTRIES.iter().find(|c| c.code == code)
}

/// Card brand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brand {
    /// Visa: PANs start with 4, 16 digits.
    Visa,
    /// Mastercard: PANs start with 51-55, 16 digits.
    Mastercard,
    /// American Express: PANs start with 34 or 37, 15 digits.
    Amex,
}

impl Brand {
    /// PAN length of the brand, digits.
    pub fn pan_len(self) -> usize {
        match self {
            Brand::Visa | Brand::Mastercard => 16,
            Brand::Amex => 15,
        }
    }
}

/// An issuer BIN (first six PAN digits).
#[derive(Debug, Clone, Copy)]
pub struct Bin {
    /// Six digits.
    pub bin: &'static str,
    /// Brand.
    pub brand: Brand,
    /// ISO 3166-1 alpha-2 issuing country.
    pub country: &'static str,
    /// Relative share among the BINs of its country.
    pub weight: f64,
}

macro_rules! bin {
    ($bin:literal, $brand:ident, $c:literal, $w:literal) => {
        Bin {
            bin: $bin,
            brand: Brand::$brand,
            country: $c,
            weight: $w,
        }
    };
}

/// Issuer BINs by country. Every country with a cardholder weight has at least one.
pub const BINS: &[Bin] = &[
    bin!("497010", Visa, "FR", 5.0),
    bin!("497355", Visa, "FR", 3.0),
    bin!("513691", Mastercard, "FR", 3.0),
    bin!("376011", Amex, "FR", 0.5),
    bin!("416598", Visa, "DE", 3.0),
    bin!("522411", Mastercard, "DE", 4.0),
    bin!("535110", Mastercard, "DE", 2.0),
    bin!("454617", Visa, "ES", 4.0),
    bin!("540007", Mastercard, "ES", 2.0),
    bin!("402360", Visa, "IT", 3.0),
    bin!("532510", Mastercard, "IT", 3.0),
    bin!("465859", Visa, "NL", 3.0),
    bin!("539983", Mastercard, "NL", 2.0),
    bin!("479213", Visa, "BE", 2.0),
    bin!("517805", Mastercard, "BE", 2.0),
    bin!("433316", Visa, "PT", 2.0),
    bin!("426510", Visa, "IE", 2.0),
    bin!("446291", Visa, "GB", 4.0),
    bin!("552188", Mastercard, "GB", 3.0),
    bin!("374288", Amex, "GB", 0.7),
    bin!("404159", Visa, "CH", 2.0),
    bin!("457173", Visa, "SE", 2.0),
    bin!("520306", Mastercard, "PL", 2.0),
    bin!("414720", Visa, "US", 4.0),
    bin!("542418", Mastercard, "US", 3.0),
    bin!("371449", Amex, "US", 1.5),
    bin!("450875", Visa, "CA", 2.0),
];

/// The issuing country of a PAN by its first six digits, if the BIN is in [`BINS`].
pub fn bin_country(pan: &str) -> Option<&'static str> {
    bin_info(pan).map(|b| b.country)
}

/// The [`Bin`] entry of a PAN's first six digits.
pub fn bin_info(pan: &str) -> Option<&'static Bin> {
    let prefix = pan.get(..6)?;
    BINS.iter().find(|b| b.bin == prefix)
}

/// A merchant category.
#[derive(Debug, Clone, Copy)]
pub struct Mcc {
    /// ISO 18245 merchant category code.
    pub code: u32,
    /// Sparkov-style category name.
    pub category: &'static str,
    /// Median genuine amount, euros.
    pub median_eur: f64,
    /// Log-scale spread of genuine amounts (sigma of the lognormal).
    pub sigma: f64,
    /// Relative share of physical (card-present) merchants.
    pub cp_weight: f64,
    /// Relative share of online (card-not-present) merchants.
    pub cnp_weight: f64,
    /// Targeted by the `stolen_card_night` scenario (see [`RISKY_MCCS`]).
    pub risky: bool,
}

macro_rules! mcc {
    ($code:literal, $cat:literal, $med:literal, $sig:literal, $cp:literal, $cnp:literal, $risky:literal) => {
        Mcc {
            code: $code,
            category: $cat,
            median_eur: $med,
            sigma: $sig,
            cp_weight: $cp,
            cnp_weight: $cnp,
            risky: $risky,
        }
    };
}

/// Merchant category codes with their amount profiles.
pub const MCCS: &[Mcc] = &[
    mcc!(5411, "grocery_pos", 35.0, 0.7, 22.0, 0.0, false),
    mcc!(5499, "grocery_net", 45.0, 0.6, 2.0, 4.0, false),
    mcc!(5541, "gas_transport", 55.0, 0.45, 10.0, 0.0, false),
    mcc!(4121, "taxi", 18.0, 0.5, 3.0, 3.0, false),
    mcc!(5812, "food_dining", 32.0, 0.6, 12.0, 0.0, false),
    mcc!(5814, "fast_food", 11.0, 0.5, 8.0, 2.0, false),
    mcc!(5912, "health_fitness", 18.0, 0.7, 6.0, 1.0, false),
    mcc!(5651, "shopping_pos", 48.0, 0.8, 8.0, 0.0, false),
    mcc!(5999, "shopping_net", 42.0, 0.9, 0.0, 12.0, false),
    mcc!(5969, "misc_net", 25.0, 0.9, 0.0, 6.0, false),
    mcc!(5200, "home", 60.0, 0.9, 4.0, 2.0, false),
    mcc!(5815, "digital_goods", 9.0, 0.6, 0.0, 6.0, false),
    mcc!(7832, "entertainment", 22.0, 0.5, 3.0, 2.0, false),
    mcc!(4511, "travel", 220.0, 0.7, 0.0, 3.0, false),
    mcc!(7011, "hotels", 130.0, 0.6, 1.0, 2.0, false),
    mcc!(8011, "personal_care", 45.0, 0.6, 3.0, 0.0, false),
    mcc!(5944, "jewelry", 180.0, 0.9, 0.8, 0.4, true),
    mcc!(5732, "electronics", 120.0, 0.9, 2.0, 3.0, true),
    mcc!(6051, "quasi_cash", 100.0, 0.7, 0.5, 0.5, true),
    mcc!(7995, "gambling", 40.0, 0.9, 0.5, 1.0, true),
];

/// MCCs the `stolen_card_night` scenario uses: jewelry 5944, electronics 5732, quasi-cash 6051,
/// gambling 7995.
pub const RISKY_MCCS: &[u32] = &[5944, 5732, 6051, 7995];

/// The [`Mcc`] entry of `code`.
pub fn mcc_info(code: u32) -> Option<&'static Mcc> {
    MCCS.iter().find(|m| m.code == code)
}

/// Whether `pan` (ASCII digits) passes the Luhn check (ISO/IEC 7812-1 annex B).
/// Non-digit characters or an empty string fail.
pub fn luhn_valid(pan: &str) -> bool {
    if pan.is_empty() || !pan.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    luhn_sum(pan.as_bytes(), false).is_multiple_of(10)
}

/// The Luhn check digit to append to `payload` (ASCII digits).
pub fn luhn_check_digit(payload: &str) -> u8 {
    let s = luhn_sum(payload.as_bytes(), true);
    ((10 - s % 10) % 10) as u8
}

/// Sum of Luhn-weighted digits, rightmost first; `double_first` doubles the rightmost digit
/// (used when computing a check digit that will be appended).
fn luhn_sum(digits: &[u8], double_first: bool) -> u32 {
    digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &b)| {
            let d = u32::from(b - b'0');
            if (i % 2 == 0) == double_first {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn luhn_accepts_known_test_numbers_and_rejects_single_digit_errors() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("378282246310005"));
        assert!(luhn_valid("5555555555554444"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid(""));
        assert!(!luhn_valid("4111-1111"));
        assert_eq!(luhn_check_digit("411111111111111"), 1);
    }

    #[test]
    fn tables_are_consistent() {
        let bins: HashSet<_> = BINS.iter().map(|b| b.bin).collect();
        assert_eq!(bins.len(), BINS.len(), "BINs are unique");
        for b in BINS {
            assert_eq!(b.bin.len(), 6);
            assert!(
                country(b.country).is_some(),
                "{} has a known country",
                b.bin
            );
            let ok = match b.brand {
                Brand::Visa => b.bin.starts_with('4'),
                Brand::Mastercard => ("51".."56").contains(&&b.bin[..2]),
                Brand::Amex => b.bin.starts_with("34") || b.bin.starts_with("37"),
            };
            assert!(ok, "{} matches its brand range", b.bin);
        }
        for c in COUNTRIES.iter().filter(|c| c.cardholder_weight > 0.0) {
            assert!(
                BINS.iter().any(|b| b.country == c.code),
                "{} has a BIN",
                c.code
            );
        }
        for code in RISKY_MCCS {
            assert!(mcc_info(*code).is_some_and(|m| m.risky));
        }
        let codes: HashSet<_> = MCCS.iter().map(|m| m.code).collect();
        assert_eq!(codes.len(), MCCS.len());
        assert_eq!(bin_country("4970101234567890"), Some("FR"));
        assert_eq!(bin_country("12"), None);
    }
}
