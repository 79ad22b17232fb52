//! The CPU stages of scoring, each doing a fixed amount of work per
//! transaction whatever its content (no early exits), so its cost is stable and measurable:
//!
//! | order | stage | work |
//! |---|---|---|
//! | 1 | [`Stage::Crypto`] | open the AES-256-GCM sealed PAN, then `crypto_rounds` seal+open rounds ([`crate::crypto`]) |
//! | 2 | [`Stage::Profile`] | BIN range search, MCC table, merchant and terminal risk hash tables, currency table |
//! | 3 | [`Stage::Rules`] | every rule of [`crate::rules`] |
//! | 4 | [`Stage::Model`] | feature extraction + logistic regression ([`crate::model`]) |
//! | 5 | [`Stage::External`] | the awaited issuer call ([`crate::timer`]), not part of [`Scorer`] |
//!
//! The original design put the profile lookup first; the card's BIN is inside the encrypted PAN, so
//! decryption runs first here. [`Scorer::assess`] runs stages 1-4 and [`Verdict`] turns the
//! result into approve / review / decline.

use std::time::Instant;

use txpipe_client::pan::{PanError, PanKeyring};
use txpipe_client::pipeline::v1::{Channel, Decision, EntryMode, Outcome, Transaction};

use crate::crypto::CryptoRounds;
use crate::model::{FeatureVec, Model, N_FEATURES};
use crate::rules::{self, Rule, RuleHits, RuleInput};
use crate::tables::{self, RiskTable};
use crate::vector::VectorModel;
use crate::{Error, Result};

/// A scoring stage (label of `txpipe_worker_stage_duration_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PAN decryption + seal/open rounds.
    Crypto,
    /// Reference-table lookups.
    Profile,
    /// Rule evaluation.
    Rules,
    /// Feature extraction + model inference.
    Model,
    /// Awaited issuer call.
    External,
}

impl Stage {
    /// Every stage in execution order.
    pub const ALL: [Stage; 5] = [
        Stage::Crypto,
        Stage::Profile,
        Stage::Rules,
        Stage::Model,
        Stage::External,
    ];

    /// Metric label value.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Crypto => "crypto",
            Stage::Profile => "profile",
            Stage::Rules => "rules",
            Stage::Model => "model",
            Stage::External => "external",
        }
    }
}

/// Score thresholds: `score >= decline` declines, else `score >= review` reviews, else approves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Review threshold, 0-1.
    pub review: f32,
    /// Decline threshold, 0-1, >= `review`.
    pub decline: f32,
}

impl Thresholds {
    /// Validated thresholds. Errors: [`Error::Config`] when outside 0-1 or review > decline.
    pub fn new(review: f32, decline: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&review) || !(0.0..=1.0).contains(&decline) {
            return Err(Error::Config(format!(
                "thresholds must be within 0-1 (review {review}, decline {decline})"
            )));
        }
        if review > decline {
            return Err(Error::Config(format!(
                "review threshold {review} is above decline threshold {decline}"
            )));
        }
        Ok(Self { review, decline })
    }

    /// The outcome for `score`.
    pub fn outcome(&self, score: f32) -> Outcome {
        if score >= self.decline {
            Outcome::Decline
        } else if score >= self.review {
            Outcome::Review
        } else {
            Outcome::Approve
        }
    }
}

/// Output of the crypto stage.
#[derive(Debug, Clone)]
pub struct Decrypted {
    /// The clear PAN, or `None` when it failed authentication.
    pub pan: Option<Vec<u8>>,
    /// Checksum of the extra rounds (observable work).
    pub checksum: u64,
}

/// Output of the profile stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Profile {
    /// Issuing country from the BIN.
    pub card_country: Option<&'static str>,
    /// MCC risk weight (0-1).
    pub mcc_risk: f32,
    /// Merchant risk (0-1) from the learned table.
    pub merchant_risk: f32,
    /// Terminal risk (0-1) from the learned table.
    pub terminal_risk: f32,
    /// Amount in EUR cents.
    pub amount_eur_minor: f64,
    /// Median amount of the MCC, EUR.
    pub mcc_median_eur: f32,
}

/// Terminal or merchant risk from which a `PROFILE_*_RISK` reason is reported.
pub const PROFILE_RISK_REASON: f32 = 0.5;

/// Result of the CPU stages for one transaction.
#[derive(Debug, Clone)]
pub struct Assessment {
    /// Rules that fired.
    pub hits: RuleHits,
    /// Model probability (before hard rules).
    pub model_score: f32,
    /// Profile lookups.
    pub profile: Profile,
    /// Final score: 1.0 when a hard rule fired, else the model probability.
    pub score: f32,
    /// Wall time of stages 1-4 (crypto, profile, rules, model), nanoseconds.
    pub stage_ns: [u64; 4],
    /// Scored by the vector model (stages 1-3 did not run; `stage_ns[..3]` are 0).
    pub vector: bool,
}

impl Assessment {
    /// Outcome under `thresholds`.
    pub fn outcome(&self, thresholds: &Thresholds) -> Outcome {
        thresholds.outcome(self.score)
    }

    /// Reason codes: every fired rule, `PROFILE_TERMINAL_RISK` / `PROFILE_MERCHANT_RISK` when
    /// the table risk is >= [`PROFILE_RISK_REASON`], and `MODEL_SCORE_HIGH` when the model
    /// alone reaches the review threshold.
    pub fn reasons(&self, thresholds: &Thresholds) -> Vec<String> {
        let mut r: Vec<String> = self.hits.iter().map(|h| h.code().to_string()).collect();
        if self.profile.terminal_risk >= PROFILE_RISK_REASON {
            r.push("PROFILE_TERMINAL_RISK".into());
        }
        if self.profile.merchant_risk >= PROFILE_RISK_REASON {
            r.push("PROFILE_MERCHANT_RISK".into());
        }
        if self.model_score >= thresholds.review {
            r.push("MODEL_SCORE_HIGH".into());
        }
        r
    }
}

/// Delivery facts copied into a decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryMeta {
    /// Offset in `transactions`.
    pub offset: u64,
    /// Delivery attempt (1 = first).
    pub attempt: u32,
    /// The record's producer timestamp, µs since the Unix epoch.
    pub produced_at_us: i64,
}

/// The scorer: keys, tables and model, shared read-only by every transaction.
#[derive(Debug)]
pub struct Scorer {
    pan_keys: PanKeyring,
    crypto: CryptoRounds,
    merchant: RiskTable,
    terminal: RiskTable,
    /// Median amount per MCC (direct-indexed, 10,000 entries), EUR.
    mcc_median: Vec<f32>,
    model: Model,
    /// When set, the worker scores pre-featurised transactions with it (and only those).
    vector: Option<VectorModel>,
    thresholds: Thresholds,
}

impl Scorer {
    /// A scorer with the PAN keys `pan_keys` (a [`PanKeyring`] or one
    /// [`txpipe_client::pan::PanKey`]),
    /// `crypto_rounds` extra rounds, the model's tables and the given thresholds.
    pub fn new(
        pan_keys: impl Into<PanKeyring>,
        crypto_rounds: u32,
        model: Model,
        thresholds: Thresholds,
    ) -> Self {
        let t = &model.file().tables;
        let merchant = tables::table_from_map(&t.merchant_risk, t.merchant_risk_default);
        let terminal = tables::table_from_map(&t.terminal_risk, t.terminal_risk_default);
        let mut mcc_median = vec![crate::model::DEFAULT_MCC_MEDIAN_EUR; 10_000];
        for (&mcc, &m) in &t.mcc_median_eur {
            if let Some(slot) = mcc_median.get_mut(mcc as usize) {
                *slot = m.max(0.01);
            }
        }
        Self {
            pan_keys: pan_keys.into(),
            crypto: CryptoRounds::new(crypto_rounds),
            merchant,
            terminal,
            mcc_median,
            model,
            vector: None,
            thresholds,
        }
    }

    /// Makes this a vector-model scorer: it scores only transactions carrying a feature
    /// vector of `vector`'s feature set, with `vector`, and [`Self::check`] rejects the rest.
    pub fn with_vector_model(mut self, vector: VectorModel) -> Self {
        self.vector = Some(vector);
        self
    }

    /// The vector model, when this scorer has one.
    pub fn vector_model(&self) -> Option<&VectorModel> {
        self.vector.as_ref()
    }

    /// Version of the model that scores: the vector model's when set, else the card model's.
    pub fn model_version(&self) -> &str {
        match &self.vector {
            Some(v) => v.version(),
            None => self.model.version(),
        }
    }

    /// Whether this scorer can score `tx`. A card-model scorer takes transactions without a
    /// feature vector; a vector-model scorer takes only those whose `feature_set` and vector
    /// length match its model; no one takes a vector with a NaN or infinite value (a producer
    /// other than ours could send one, and it used to be scored and approved). Errors: the
    /// reason, used for a permanent nack (the broker dead-letters the transaction on this
    /// first attempt), so nothing is scored with the wrong model or garbage features.
    pub fn check(&self, tx: &Transaction) -> std::result::Result<(), String> {
        // A PAN sealed with a key this worker does not hold (or in a format it does not
        // read) cannot be scored by it: dead-letter it with the reason rather than score it
        // as an unreadable card. (A tampered value with a known key id is scored as
        // unreadable, as before.)
        if !tx.pan_encrypted.is_empty()
            && let Err(e @ (PanError::UnknownKey { .. } | PanError::UnsupportedVersion(_))) =
                self.pan_keys.key_for(&tx.pan_encrypted)
        {
            return Err(e.to_string());
        }
        if let Some(i) = tx.features.iter().position(|f| !f.is_finite()) {
            return Err(format!(
                "feature {i} of the vector is {} (not a finite number)",
                tx.features[i]
            ));
        }
        match &self.vector {
            Some(v) if tx.features.is_empty() => Err(format!(
                "transaction has no feature vector; this worker's model {} scores pre-featurised transactions",
                v.version()
            )),
            Some(v) => v.accepts(&tx.feature_set, tx.features.len()),
            None if !tx.features.is_empty() => Err(format!(
                "transaction carries a feature vector (feature set {:?}) but this worker runs the card model {}; start the workers with a vector model (--model builtin:ulb-gbt or a file trained on those columns)",
                tx.feature_set,
                self.model.version()
            )),
            None => Ok(()),
        }
    }

    /// Replaces the merchant and terminal tables (used by training to score with tables
    /// learned on an earlier period).
    pub fn with_tables(mut self, merchant: RiskTable, terminal: RiskTable) -> Self {
        self.merchant = merchant;
        self.terminal = terminal;
        self
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// AES-256-GCM seal+open rounds of the crypto stage.
    pub fn crypto_rounds(&self) -> u32 {
        self.crypto.rounds()
    }

    /// The thresholds.
    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// Stage 1: open the sealed PAN and run the extra rounds (over a zero block when the PAN
    /// is unreadable, so the cost is the same).
    pub fn stage_crypto(&self, tx: &Transaction) -> Decrypted {
        let pan = self.pan_keys.open(&tx.id, &tx.pan_encrypted).ok();
        let checksum = self.crypto.run(&tx.id, pan.as_deref().unwrap_or(&[]));
        Decrypted { pan, checksum }
    }

    /// Stage 2: table lookups (BIN, MCC, merchant, terminal, currency).
    pub fn stage_profile(&self, tx: &Transaction, pan: Option<&[u8]>) -> Profile {
        let bin = pan.and_then(rules::bin_of);
        Profile {
            card_country: bin.and_then(tables::bin_country),
            mcc_risk: tables::mcc_risk(tx.mcc),
            merchant_risk: self.merchant.get(&tx.merchant_id),
            terminal_risk: self.terminal.get(&tx.terminal_id),
            amount_eur_minor: tables::currency_to_eur_minor(tx.amount_minor, &tx.currency),
            mcc_median_eur: self.mcc_median[(tx.mcc as usize).min(9_999)],
        }
    }

    /// Stage 3: every rule.
    pub fn stage_rules(&self, tx: &Transaction, pan: Option<&[u8]>, profile: &Profile) -> RuleHits {
        rules::evaluate(
            tx,
            &RuleInput {
                pan,
                card_country: profile.card_country,
                amount_eur_minor: profile.amount_eur_minor,
            },
        )
    }

    /// Feature vector (order of [`crate::model::FEATURES`]).
    pub fn features(tx: &Transaction, profile: &Profile, hits: RuleHits) -> FeatureVec {
        let b = |r: Rule| f32::from(u8::from(hits.has(r)));
        let amount_log = (1.0 + profile.amount_eur_minor.max(0.0) / 100.0).ln() as f32;
        let channel = Channel::try_from(tx.channel).unwrap_or(Channel::Unspecified);
        let entry = EntryMode::try_from(tx.entry_mode).unwrap_or(EntryMode::Unspecified);
        let cnp = f32::from(u8::from(rules::is_cnp(tx)));
        let hour = (tx.local_hour % 24) as f32 * std::f32::consts::TAU / 24.0;
        let (ey, em) = rules::year_month_of(tx.event_time_us);
        let months_left = (tx.expiry_year as i32 - ey) * 12 + (tx.expiry_month as i32 - em as i32);
        let mismatch = b(Rule::CountryMismatch);
        let night = b(Rule::NightHours);
        let x: FeatureVec = [
            amount_log,
            b(Rule::AmountHigh),
            b(Rule::AmountVeryHigh),
            b(Rule::SmallAmountCnp),
            mismatch,
            b(Rule::UnknownBin),
            profile.mcc_risk,
            b(Rule::RiskyMcc),
            f32::from(u8::from(channel == Channel::Ecommerce)),
            f32::from(u8::from(channel == Channel::Moto)),
            b(Rule::MagstripeOrManual),
            f32::from(u8::from(entry == EntryMode::Contactless)),
            b(Rule::CnpNo3ds),
            b(Rule::CnpNoCvv),
            night,
            hour.sin(),
            hour.cos(),
            b(Rule::CardExpired),
            profile.merchant_risk,
            profile.terminal_risk,
            f32::from(u8::from(profile.terminal_risk >= PROFILE_RISK_REASON)),
            months_left.clamp(0, 60) as f32 / 60.0,
            night * b(Rule::RiskyMcc),
            b(Rule::CnpNo3ds) * mismatch,
            amount_log * mismatch,
            amount_log * cnp,
            mismatch * (1.0 - cnp),
            night * amount_log,
            ((1.0 + profile.amount_eur_minor.max(0.0) as f32 / 100.0)
                / (1.0 + profile.mcc_median_eur))
                .ln(),
        ];
        debug_assert_eq!(x.len(), N_FEATURES);
        x
    }

    /// Stage 4: features + model probability.
    pub fn stage_model(&self, tx: &Transaction, profile: &Profile, hits: RuleHits) -> f32 {
        self.model.predict(&Self::features(tx, profile, hits))
    }

    /// Final score from the model probability and the rules: 1.0 if a hard rule fired.
    pub fn combine(model_score: f32, hits: RuleHits) -> f32 {
        if hits.any_hard() { 1.0 } else { model_score }
    }

    /// Runs stages 1-4 on `tx`, timing each with the monotonic clock. With a vector model
    /// only stage 4 runs, on `tx.features` (call [`Self::check`] first; a vector of the wrong
    /// length scores 1.0, which declines rather than approves).
    pub fn assess(&self, tx: &Transaction) -> Assessment {
        if let Some(v) = &self.vector {
            let t0 = Instant::now();
            let model_score = v.predict(&tx.features).unwrap_or(1.0);
            let ns = t0.elapsed().as_nanos() as u64;
            return Assessment {
                hits: RuleHits::default(),
                model_score,
                profile: Profile::default(),
                score: model_score,
                stage_ns: [0, 0, 0, ns],
                vector: true,
            };
        }
        let t0 = Instant::now();
        let dec = self.stage_crypto(tx);
        let t1 = Instant::now();
        let profile = self.stage_profile(tx, dec.pan.as_deref());
        let t2 = Instant::now();
        let hits = self.stage_rules(tx, dec.pan.as_deref(), &profile);
        let t3 = Instant::now();
        let model_score = self.stage_model(tx, &profile, hits);
        let t4 = Instant::now();
        std::hint::black_box(dec.checksum);
        Assessment {
            hits,
            model_score,
            profile,
            score: Self::combine(model_score, hits),
            stage_ns: [
                (t1 - t0).as_nanos() as u64,
                (t2 - t1).as_nanos() as u64,
                (t3 - t2).as_nanos() as u64,
                (t4 - t3).as_nanos() as u64,
            ],
            vector: false,
        }
    }

    /// Builds the decision record for an assessed transaction.
    pub fn decision(
        &self,
        tx_id: &str,
        a: &Assessment,
        meta: DeliveryMeta,
        worker: &str,
        decided_at_us: i64,
        scoring_us: u32,
    ) -> Decision {
        Decision {
            transaction_id: tx_id.to_string(),
            outcome: a.outcome(&self.thresholds) as i32,
            score: a.score,
            reasons: a.reasons(&self.thresholds),
            model_version: self.model_version().to_string(),
            source_offset: meta.offset,
            attempt: meta.attempt,
            produced_at_us: meta.produced_at_us,
            decided_at_us,
            scoring_us,
            worker: worker.to_string(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{FEATURES, ModelFile, TablesFile};
    use txpipe_client::pan::PanKey;

    /// A transaction sealed with the dev key.
    pub(crate) fn sealed_tx(id: &str, pan: &str) -> Transaction {
        Transaction {
            id: id.into(),
            event_time_us: 1_767_225_600_000_000,
            customer_id: "c-1".into(),
            pan_encrypted: PanKey::insecure_test_key().seal(id, pan.as_bytes()),
            key_id: "dev-1".into(),
            expiry_month: 12,
            expiry_year: 2028,
            amount_minor: 4_250,
            currency: "EUR".into(),
            merchant_id: "m-1".into(),
            mcc: 5411,
            terminal_id: "t-1".into(),
            merchant_country: "GB".into(),
            channel: Channel::CardPresent as i32,
            entry_mode: EntryMode::Chip as i32,
            three_ds: false,
            cvv_present: false,
            local_hour: 14,
            features: vec![],
            feature_set: String::new(),
        }
    }

    pub(crate) fn test_model() -> Model {
        let mut w = vec![0.0; N_FEATURES];
        w[0] = 0.5; // amount_log
        w[4] = 1.5; // country_mismatch
        w[19] = 3.0; // terminal_risk
        Model::from_file(ModelFile {
            model_version: "test-1".into(),
            kind: "logistic_regression".into(),
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
            mean: vec![0.0; N_FEATURES],
            std: vec![1.0; N_FEATURES],
            weights: w,
            bias: -5.0,
            review_threshold: 0.5,
            decline_threshold: 0.9,
            tables: TablesFile {
                merchant_risk_default: 0.01,
                merchant_risk: Default::default(),
                terminal_risk_default: 0.01,
                terminal_risk: [("t-bad".to_string(), 0.95)].into_iter().collect(),
                mcc_median_eur: Default::default(),
            },
            training: serde_json::Value::Null,
        })
        .unwrap()
    }

    pub(crate) fn test_scorer() -> Scorer {
        Scorer::new(
            PanKey::insecure_test_key(),
            3,
            test_model(),
            Thresholds::new(0.5, 0.9).unwrap(),
        )
    }

    #[test]
    fn a_worker_opens_pans_of_every_key_it_lists_and_dead_letters_unknown_key_ids() {
        let (h1, h2) = ("11".repeat(32), "22".repeat(32));
        // The producer rotated: k2 is current, k1 still listed.
        let producer = PanKeyring::parse(&format!("k2 {h2}\nk1 {h1}\n"), "p")
            .unwrap()
            .into_current();
        let old_producer = PanKey::from_hex("k1", &h1).unwrap();
        let worker = Scorer::new(
            PanKeyring::parse(&format!("k1 {h1}\nk2 {h2}\n"), "w").unwrap(),
            0,
            test_model(),
            Thresholds::new(0.5, 0.9).unwrap(),
        );
        for (key, id) in [(&producer, "tx-k2"), (&old_producer, "tx-k1")] {
            let mut tx = sealed_tx(id, "4111111111111111");
            tx.pan_encrypted = key.seal(id, b"4111111111111111");
            assert!(worker.check(&tx).is_ok());
            assert_eq!(
                worker.stage_crypto(&tx).pan.as_deref(),
                Some(&b"4111111111111111"[..])
            );
        }
        let stranger = PanKey::from_hex("k9", &"99".repeat(32)).unwrap();
        let mut tx = sealed_tx("tx-k9", "4111111111111111");
        tx.pan_encrypted = stranger.seal("tx-k9", b"4111111111111111");
        let reason = worker.check(&tx).unwrap_err();
        assert_eq!(
            reason,
            "sealed PAN uses key id \"k9\", which is not in this keyring (ids: k1, k2)"
        );
    }

    #[test]
    fn each_scorer_takes_only_the_transactions_of_its_model() {
        let card = Scorer::new(
            PanKey::insecure_test_key(),
            0,
            test_model(),
            Thresholds::new(0.5, 0.9).unwrap(),
        );
        let v = crate::vector::VectorModel::builtin("ulb-gbt").unwrap();
        let vector = Scorer::new(
            PanKey::insecure_test_key(),
            0,
            test_model(),
            Thresholds::new(0.5, 0.9).unwrap(),
        )
        .with_vector_model(v.clone());
        let plain = sealed_tx("tx-1", "4111111111111111");
        let mut featurised = sealed_tx("tx-2", "");
        featurised.features = vec![0.0; 29];
        featurised.feature_set = v.feature_set().to_string();

        assert!(card.check(&plain).is_ok());
        let e = card.check(&featurised).unwrap_err();
        assert!(e.contains("card model"), "{e}");
        let e = vector.check(&plain).unwrap_err();
        assert!(e.contains("no feature vector"), "{e}");
        assert!(vector.check(&featurised).is_ok());
        let mut other = featurised.clone();
        other.feature_set = txpipe_client::features::fingerprint(["V2", "V1"]);
        assert!(vector.check(&other).unwrap_err().contains("does not match"));
        let mut short = featurised.clone();
        short.features.pop();
        assert!(vector.check(&short).is_err());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut garbage = featurised.clone();
            garbage.features[7] = bad;
            let e = vector.check(&garbage).unwrap_err();
            assert!(e.contains("feature 7") && e.contains("not a finite"), "{e}");
            // A card-model worker refuses it too (for the vector, not for the model).
            assert!(card.check(&garbage).is_err());
        }

        let a = vector.assess(&featurised);
        assert!(a.vector && a.hits == RuleHits::default());
        assert_eq!(a.score, v.predict(&featurised.features).unwrap());
        assert_eq!(a.stage_ns[..3], [0, 0, 0]);
        let d = vector.decision("tx-2", &a, DeliveryMeta::default(), "w", 1, 1);
        assert_eq!(d.model_version, "ulb-gbt-1");
    }

    #[test]
    fn scoring_is_deterministic() {
        let s = test_scorer();
        let tx = sealed_tx("tx-1", "4462911234567890");
        let a = s.assess(&tx);
        let b = s.assess(&tx);
        assert_eq!(a.score, b.score);
        assert_eq!(a.hits, b.hits);
        assert_eq!(a.profile, b.profile);
    }

    #[test]
    fn a_clean_transaction_is_approved_with_the_expected_score() {
        let s = test_scorer();
        let a = s.assess(&sealed_tx("tx-1", "4462911234567890"));
        assert_eq!(a.profile.card_country, Some("GB"));
        assert_eq!(a.hits, RuleHits::default());
        // z = -5 + 0.5 * ln(1 + 42.5) + 3.0 * 0.01
        let z = -5.0 + 0.5 * (43.5f32).ln() + 0.03;
        assert!((a.score - crate::model::sigmoid(z)).abs() < 1e-5);
        assert_eq!(a.outcome(s.thresholds()), Outcome::Approve);
        assert!(a.reasons(s.thresholds()).is_empty());
    }

    #[test]
    fn a_luhn_invalid_card_is_declined_whatever_the_model_says() {
        let s = test_scorer();
        let a = s.assess(&sealed_tx("tx-1", "4462911234567891"));
        assert!(a.hits.has(Rule::LuhnFailed));
        assert_eq!(a.score, 1.0);
        assert_eq!(a.outcome(s.thresholds()), Outcome::Decline);
        assert!(
            a.reasons(s.thresholds())
                .contains(&"RULE_LUHN_FAILED".to_string())
        );
    }

    #[test]
    fn a_pan_sealed_for_another_transaction_is_unreadable_and_declined() {
        let s = test_scorer();
        let mut tx = sealed_tx("tx-1", "4462911234567890");
        tx.pan_encrypted = PanKey::insecure_test_key().seal("tx-other", b"4462911234567890");
        let a = s.assess(&tx);
        assert!(a.hits.has(Rule::PanUnreadable));
        assert_eq!(a.outcome(s.thresholds()), Outcome::Decline);
    }

    #[test]
    fn a_high_risk_terminal_abroad_is_flagged_by_profile_and_model() {
        let s = test_scorer();
        let mut tx = sealed_tx("tx-1", "4147209876543219");
        tx.terminal_id = "t-bad".into();
        tx.amount_minor = 500_000;
        let a = s.assess(&tx);
        assert_eq!(a.profile.terminal_risk, 0.95);
        assert!(a.hits.has(Rule::CountryMismatch));
        let reasons = a.reasons(s.thresholds());
        assert!(
            reasons.contains(&"PROFILE_TERMINAL_RISK".to_string()),
            "{reasons:?}"
        );
        assert_ne!(a.outcome(s.thresholds()), Outcome::Approve);
    }

    #[test]
    fn the_shipped_model_approves_a_routine_purchase_and_flags_a_card_test() {
        let model = Model::embedded();
        let th = Thresholds::new(
            model.file().review_threshold,
            model.file().decline_threshold,
        )
        .unwrap();
        let s = Scorer::new(PanKey::insecure_test_key(), 1, model, th);
        let routine = s.assess(&sealed_tx("tx-1", "4462911234567890"));
        assert_eq!(
            routine.outcome(&th),
            Outcome::Approve,
            "score {}",
            routine.score
        );
        let mut probe = sealed_tx("tx-2", "4462911234567890");
        probe.channel = Channel::Ecommerce as i32;
        probe.entry_mode = EntryMode::Ecommerce as i32;
        probe.amount_minor = 50;
        probe.merchant_country = "US".into();
        probe.mcc = 5999;
        let a = s.assess(&probe);
        assert_ne!(a.outcome(&th), Outcome::Approve, "score {}", a.score);
        assert!(a.score > routine.score * 10.0);
    }

    #[test]
    fn thresholds_map_scores_to_outcomes_and_reject_bad_values() {
        let t = Thresholds::new(0.3, 0.8).unwrap();
        assert_eq!(t.outcome(0.29), Outcome::Approve);
        assert_eq!(t.outcome(0.3), Outcome::Review);
        assert_eq!(t.outcome(0.79), Outcome::Review);
        assert_eq!(t.outcome(0.8), Outcome::Decline);
        assert!(Thresholds::new(0.9, 0.5).is_err());
        assert!(Thresholds::new(-0.1, 0.5).is_err());
        assert!(Thresholds::new(0.1, 1.5).is_err());
    }

    #[test]
    fn features_are_extracted_from_the_transaction_and_tables() {
        let mut tx = sealed_tx("tx-1", "4462911234567890");
        tx.channel = Channel::Ecommerce as i32;
        tx.entry_mode = EntryMode::Ecommerce as i32;
        tx.local_hour = 2;
        tx.mcc = 7995;
        let profile = Profile {
            card_country: Some("US"),
            mcc_risk: 0.8,
            merchant_risk: 0.1,
            terminal_risk: 0.7,
            amount_eur_minor: 9_900.0,
            mcc_median_eur: 39.0,
        };
        let hits = rules::evaluate(
            &tx,
            &RuleInput {
                pan: Some(b"4462911234567890"),
                card_country: Some("US"),
                amount_eur_minor: 9_900.0,
            },
        );
        let x = Scorer::features(&tx, &profile, hits);
        let f = |name: &str| x[FEATURES.iter().position(|n| *n == name).unwrap()];
        assert!((f("amount_log") - 100f32.ln()).abs() < 1e-5);
        assert_eq!(f("country_mismatch"), 1.0);
        assert_eq!(f("channel_ecommerce"), 1.0);
        assert_eq!(f("cnp_no_3ds"), 1.0);
        assert_eq!(f("night"), 1.0);
        assert_eq!(f("night_x_risky_mcc"), 1.0);
        assert_eq!(f("mcc_risk"), 0.8);
        assert_eq!(f("terminal_risk"), 0.7);
        assert_eq!(f("terminal_risk_high"), 1.0);
        assert_eq!(f("mismatch_x_card_present"), 0.0);
        assert!((f("expiry_months_left") - 35.0 / 60.0).abs() < 1e-6);
        assert!((f("amount_vs_mcc_median") - (100f32 / 40.0).ln()).abs() < 1e-5);
    }
}
