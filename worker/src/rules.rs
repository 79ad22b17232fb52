//! The rules stage: deterministic checks over one transaction, always all evaluated.
//!
//! Each [`Rule`] is one bit of a [`RuleHits`] set. Hard rules ([`Rule::is_hard`]: the PAN
//! cannot be read, is malformed, or fails the Luhn check) force a decline whatever the model
//! says; the others feed the model as features and are reported as reasons.

use txpipe_client::pipeline::v1::{Channel, EntryMode, Transaction};

use crate::tables;

/// Amount from which [`Rule::AmountHigh`] fires, EUR cents (1,000 EUR).
pub const AMOUNT_HIGH_EUR_MINOR: f64 = 100_000.0;
/// Amount from which [`Rule::AmountVeryHigh`] fires, EUR cents (5,000 EUR).
pub const AMOUNT_VERY_HIGH_EUR_MINOR: f64 = 500_000.0;
/// Card-not-present amounts below this fire [`Rule::SmallAmountCnp`], EUR cents (3 EUR): the
/// typical probe amount of card testing.
pub const SMALL_AMOUNT_EUR_MINOR: f64 = 300.0;

/// One rule. The discriminant is the bit position in [`RuleHits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rule {
    /// The sealed PAN failed to decrypt (wrong key, tampered, wrong transaction id).
    PanUnreadable = 0,
    /// The PAN is not 13-19 ASCII digits.
    PanFormatInvalid = 1,
    /// The PAN fails the Luhn (mod 10) check.
    LuhnFailed = 2,
    /// The card expired before the transaction's event month.
    CardExpired = 3,
    /// Amount >= [`AMOUNT_HIGH_EUR_MINOR`].
    AmountHigh = 4,
    /// Amount >= [`AMOUNT_VERY_HIGH_EUR_MINOR`].
    AmountVeryHigh = 5,
    /// Card issuing country (from the BIN) differs from the merchant country.
    CountryMismatch = 6,
    /// The BIN is in no known issuer range.
    UnknownBin = 7,
    /// The MCC is on the high-risk list ([`tables::RISKY_MCCS`]).
    RiskyMcc = 8,
    /// Card not present without 3-D Secure.
    CnpNo3ds = 9,
    /// Card not present without CVV2.
    CnpNoCvv = 10,
    /// Local hour 0-5.
    NightHours = 11,
    /// Card present, read from the magnetic stripe or keyed in manually.
    MagstripeOrManual = 12,
    /// Card not present, amount below [`SMALL_AMOUNT_EUR_MINOR`].
    SmallAmountCnp = 13,
}

impl Rule {
    /// Every rule, in bit order.
    pub const ALL: [Rule; 14] = [
        Rule::PanUnreadable,
        Rule::PanFormatInvalid,
        Rule::LuhnFailed,
        Rule::CardExpired,
        Rule::AmountHigh,
        Rule::AmountVeryHigh,
        Rule::CountryMismatch,
        Rule::UnknownBin,
        Rule::RiskyMcc,
        Rule::CnpNo3ds,
        Rule::CnpNoCvv,
        Rule::NightHours,
        Rule::MagstripeOrManual,
        Rule::SmallAmountCnp,
    ];

    /// The reason code written into decisions, e.g. `RULE_LUHN_FAILED`.
    pub fn code(self) -> &'static str {
        match self {
            Rule::PanUnreadable => "RULE_PAN_UNREADABLE",
            Rule::PanFormatInvalid => "RULE_PAN_FORMAT_INVALID",
            Rule::LuhnFailed => "RULE_LUHN_FAILED",
            Rule::CardExpired => "RULE_CARD_EXPIRED",
            Rule::AmountHigh => "RULE_AMOUNT_HIGH",
            Rule::AmountVeryHigh => "RULE_AMOUNT_VERY_HIGH",
            Rule::CountryMismatch => "RULE_COUNTRY_MISMATCH",
            Rule::UnknownBin => "RULE_UNKNOWN_BIN",
            Rule::RiskyMcc => "RULE_RISKY_MCC",
            Rule::CnpNo3ds => "RULE_CNP_NO_3DS",
            Rule::CnpNoCvv => "RULE_CNP_NO_CVV",
            Rule::NightHours => "RULE_NIGHT_HOURS",
            Rule::MagstripeOrManual => "RULE_MAGSTRIPE_OR_MANUAL",
            Rule::SmallAmountCnp => "RULE_SMALL_AMOUNT_CNP",
        }
    }

    /// True for rules that force a decline: the card number itself is bad.
    pub fn is_hard(self) -> bool {
        matches!(
            self,
            Rule::PanUnreadable | Rule::PanFormatInvalid | Rule::LuhnFailed
        )
    }
}

/// A set of fired rules (bit `r as u8` set when rule `r` fired).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleHits(pub u32);

impl RuleHits {
    /// True if `rule` fired.
    pub fn has(self, rule: Rule) -> bool {
        self.0 & (1 << rule as u8) != 0
    }

    /// Sets `rule` when `fired`, without branching on it.
    pub fn set(&mut self, rule: Rule, fired: bool) {
        self.0 |= u32::from(fired) << rule as u8;
    }

    /// True if any hard rule fired.
    pub fn any_hard(self) -> bool {
        Rule::ALL.iter().any(|r| r.is_hard() && self.has(*r))
    }

    /// The fired rules, in bit order.
    pub fn iter(self) -> impl Iterator<Item = Rule> {
        Rule::ALL.into_iter().filter(move |r| self.has(*r))
    }
}

/// Luhn (mod 10) check of an ASCII digit string (H. P. Luhn, US patent 2,950,048). Non-digits
/// make it fail. Visits every byte (no early exit).
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut all_digits = !digits.is_empty();
    for (i, &b) in digits.iter().rev().enumerate() {
        all_digits &= b.is_ascii_digit();
        let mut d = u32::from(b.wrapping_sub(b'0')) % 10;
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    all_digits && sum.is_multiple_of(10)
}

/// True if `pan` is 13-19 ASCII digits (ISO/IEC 7812 lengths).
pub fn pan_format_valid(pan: &[u8]) -> bool {
    let digits = pan.iter().filter(|b| b.is_ascii_digit()).count();
    (13..=19).contains(&pan.len()) && digits == pan.len()
}

/// The BIN (first six digits) of a PAN as a number, or `None` if they are not six digits.
pub fn bin_of(pan: &[u8]) -> Option<u32> {
    if pan.len() < 6 {
        return None;
    }
    let mut bin = 0u32;
    let mut ok = true;
    for &b in &pan[..6] {
        ok &= b.is_ascii_digit();
        bin = bin * 10 + u32::from(b.wrapping_sub(b'0')) % 10;
    }
    ok.then_some(bin)
}

/// Civil (year, month) of a Unix time in microseconds (UTC), via
/// [`txpipe_client::time::year_month_of`].
pub fn year_month_of(unix_us: i64) -> (i32, u32) {
    let (y, m) = txpipe_client::time::year_month_of(unix_us);
    (y as i32, m)
}

/// Everything the rules look at besides the transaction itself.
#[derive(Debug, Clone, Copy)]
pub struct RuleInput<'a> {
    /// The decrypted PAN, or `None` if it could not be decrypted.
    pub pan: Option<&'a [u8]>,
    /// Issuing country from the BIN table.
    pub card_country: Option<&'static str>,
    /// Amount in EUR cents.
    pub amount_eur_minor: f64,
}

/// True for card-not-present channels (e-commerce, mail/telephone order).
pub fn is_cnp(tx: &Transaction) -> bool {
    matches!(
        Channel::try_from(tx.channel),
        Ok(Channel::Ecommerce) | Ok(Channel::Moto)
    )
}

/// Evaluates every rule (no early exit).
pub fn evaluate(tx: &Transaction, input: &RuleInput<'_>) -> RuleHits {
    let mut hits = RuleHits::default();
    let pan = input.pan.unwrap_or(b"");
    hits.set(Rule::PanUnreadable, input.pan.is_none());
    hits.set(Rule::PanFormatInvalid, !pan_format_valid(pan));
    hits.set(Rule::LuhnFailed, !luhn_valid(pan));

    let (ey, em) = year_month_of(tx.event_time_us);
    let expired = (tx.expiry_year as i32, tx.expiry_month) < (ey, em);
    hits.set(Rule::CardExpired, expired);

    hits.set(
        Rule::AmountHigh,
        input.amount_eur_minor >= AMOUNT_HIGH_EUR_MINOR,
    );
    hits.set(
        Rule::AmountVeryHigh,
        input.amount_eur_minor >= AMOUNT_VERY_HIGH_EUR_MINOR,
    );
    let mismatch = input
        .card_country
        .is_some_and(|c| !tx.merchant_country.is_empty() && c != tx.merchant_country);
    hits.set(Rule::CountryMismatch, mismatch);
    hits.set(Rule::UnknownBin, input.card_country.is_none());
    hits.set(Rule::RiskyMcc, tables::mcc_risk(tx.mcc) > 0.0);

    let cnp = is_cnp(tx);
    hits.set(Rule::CnpNo3ds, cnp && !tx.three_ds);
    hits.set(Rule::CnpNoCvv, cnp && !tx.cvv_present);
    hits.set(Rule::NightHours, tx.local_hour <= 5);
    let entry = EntryMode::try_from(tx.entry_mode).unwrap_or(EntryMode::Unspecified);
    hits.set(
        Rule::MagstripeOrManual,
        !cnp && matches!(entry, EntryMode::Magstripe | EntryMode::Manual),
    );
    hits.set(
        Rule::SmallAmountCnp,
        cnp && input.amount_eur_minor < SMALL_AMOUNT_EUR_MINOR,
    );
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_tx() -> Transaction {
        Transaction {
            id: "tx-1".into(),
            event_time_us: 1_767_225_600_000_000, // 2026-01-01T00:00:00Z
            expiry_month: 12,
            expiry_year: 2028,
            amount_minor: 4_250,
            currency: "EUR".into(),
            mcc: 5411,
            merchant_country: "GB".into(),
            channel: Channel::CardPresent as i32,
            entry_mode: EntryMode::Chip as i32,
            local_hour: 14,
            ..Default::default()
        }
    }

    fn input(pan: &[u8]) -> RuleInput<'_> {
        RuleInput {
            pan: Some(pan),
            card_country: Some("GB"),
            amount_eur_minor: 4_250.0,
        }
    }

    const GOOD_PAN: &[u8] = b"4111111111111111";

    #[test]
    fn luhn_accepts_valid_numbers_and_rejects_single_digit_errors() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(luhn_valid(b"79927398713"));
        assert!(luhn_valid(b"5555555555554444"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(!luhn_valid(b"79927398710"));
        assert!(!luhn_valid(b"4111a11111111111"));
        assert!(!luhn_valid(b""));
    }

    #[test]
    fn a_clean_card_present_purchase_fires_no_rule() {
        let hits = evaluate(&base_tx(), &input(GOOD_PAN));
        assert_eq!(
            hits,
            RuleHits::default(),
            "fired: {:?}",
            hits.iter().collect::<Vec<_>>()
        );
    }

    #[test]
    fn each_rule_fires_on_its_own_condition() {
        let check = |rule: Rule, tx: Transaction, inp: RuleInput<'_>| {
            let hits = evaluate(&tx, &inp);
            assert!(hits.has(rule), "{rule:?} did not fire");
        };
        check(
            Rule::PanUnreadable,
            base_tx(),
            RuleInput {
                pan: None,
                ..input(GOOD_PAN)
            },
        );
        check(Rule::PanFormatInvalid, base_tx(), input(b"41111111"));
        check(
            Rule::PanFormatInvalid,
            base_tx(),
            input(b"41111111111x1111"),
        );
        check(Rule::LuhnFailed, base_tx(), input(b"4111111111111112"));
        check(
            Rule::CardExpired,
            Transaction {
                expiry_year: 2025,
                expiry_month: 12,
                ..base_tx()
            },
            input(GOOD_PAN),
        );
        check(
            Rule::AmountHigh,
            base_tx(),
            RuleInput {
                amount_eur_minor: 150_000.0,
                ..input(GOOD_PAN)
            },
        );
        check(
            Rule::AmountVeryHigh,
            base_tx(),
            RuleInput {
                amount_eur_minor: 600_000.0,
                ..input(GOOD_PAN)
            },
        );
        check(
            Rule::CountryMismatch,
            base_tx(),
            RuleInput {
                card_country: Some("US"),
                ..input(GOOD_PAN)
            },
        );
        check(
            Rule::UnknownBin,
            base_tx(),
            RuleInput {
                card_country: None,
                ..input(GOOD_PAN)
            },
        );
        check(
            Rule::RiskyMcc,
            Transaction {
                mcc: 6051,
                ..base_tx()
            },
            input(GOOD_PAN),
        );
        let cnp = Transaction {
            channel: Channel::Ecommerce as i32,
            entry_mode: EntryMode::Ecommerce as i32,
            ..base_tx()
        };
        check(Rule::CnpNo3ds, cnp.clone(), input(GOOD_PAN));
        check(Rule::CnpNoCvv, cnp.clone(), input(GOOD_PAN));
        check(
            Rule::SmallAmountCnp,
            cnp,
            RuleInput {
                amount_eur_minor: 100.0,
                ..input(GOOD_PAN)
            },
        );
        check(
            Rule::NightHours,
            Transaction {
                local_hour: 3,
                ..base_tx()
            },
            input(GOOD_PAN),
        );
        check(
            Rule::MagstripeOrManual,
            Transaction {
                entry_mode: EntryMode::Magstripe as i32,
                ..base_tx()
            },
            input(GOOD_PAN),
        );
    }

    #[test]
    fn a_card_expiring_this_month_is_still_valid() {
        let tx = Transaction {
            expiry_year: 2026,
            expiry_month: 1,
            ..base_tx()
        };
        assert!(!evaluate(&tx, &input(GOOD_PAN)).has(Rule::CardExpired));
    }

    #[test]
    fn only_card_number_rules_are_hard() {
        let hard: Vec<Rule> = Rule::ALL.into_iter().filter(|r| r.is_hard()).collect();
        assert_eq!(
            hard,
            vec![
                Rule::PanUnreadable,
                Rule::PanFormatInvalid,
                Rule::LuhnFailed
            ]
        );
        let hits = evaluate(&base_tx(), &input(b"4111111111111112"));
        assert!(hits.any_hard());
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(year_month_of(0), (1970, 1));
        assert_eq!(year_month_of(1_767_225_600_000_000), (2026, 1));
        assert_eq!(year_month_of(1_767_225_599_999_999), (2025, 12));
        assert_eq!(year_month_of(951_782_400_000_000), (2000, 2)); // 2000-02-29
    }

    #[test]
    fn bin_of_reads_the_first_six_digits() {
        assert_eq!(bin_of(b"4111111111111111"), Some(411111));
        assert_eq!(bin_of(b"41x1111111111111"), None);
        assert_eq!(bin_of(b"4111"), None);
    }
}
