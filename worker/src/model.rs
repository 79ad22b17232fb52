//! The model stage: logistic regression over [`FEATURES`], loaded from `model.json`.
//!
//! The file (written by `txpipe-train`, see [`crate::train`]) holds the feature names (checked
//! against [`FEATURES`] at load), per-feature standardisation (mean, standard deviation),
//! weights, bias, recommended thresholds, the learned merchant/terminal risk tables, and a
//! free-form `training` object (command, seed, metrics). The embedded default is
//! `worker/model/model.json`, compiled into the binary with `include_str!`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Names of the model's input features, in vector order. See
/// [`crate::scoring::Scorer::features`] for their definitions.
pub const FEATURES: [&str; 29] = [
    "amount_log",
    "amount_high",
    "amount_very_high",
    "small_amount_cnp",
    "country_mismatch",
    "unknown_bin",
    "mcc_risk",
    "risky_mcc",
    "channel_ecommerce",
    "channel_moto",
    "entry_magstripe_or_manual",
    "entry_contactless",
    "cnp_no_3ds",
    "cnp_no_cvv",
    "night",
    "hour_sin",
    "hour_cos",
    "card_expired",
    "merchant_risk",
    "terminal_risk",
    "terminal_risk_high",
    "expiry_months_left",
    "night_x_risky_mcc",
    "cnp_no_3ds_x_mismatch",
    "amount_log_x_mismatch",
    "amount_log_x_cnp",
    "mismatch_x_card_present",
    "night_x_amount_log",
    "amount_vs_mcc_median",
];

/// Number of features.
pub const N_FEATURES: usize = FEATURES.len();

/// A feature vector.
pub type FeatureVec = [f32; N_FEATURES];

/// The embedded default model (`worker/model/model.json`).
pub const EMBEDDED_MODEL_JSON: &str = include_str!("../model/model.json");

/// Learned read-only risk tables shipped with the model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TablesFile {
    /// Risk of merchants absent from `merchant_risk`.
    pub merchant_risk_default: f32,
    /// Smoothed fraud rate per merchant id (only merchants well above the default).
    pub merchant_risk: BTreeMap<String, f32>,
    /// Risk of terminals absent from `terminal_risk`.
    pub terminal_risk_default: f32,
    /// Smoothed fraud rate per terminal id (only terminals well above the default).
    pub terminal_risk: BTreeMap<String, f32>,
    /// Median amount per MCC, EUR (a static reference table: what a purchase in each
    /// category usually costs). MCCs absent here use [`DEFAULT_MCC_MEDIAN_EUR`].
    #[serde(default)]
    pub mcc_median_eur: BTreeMap<u32, f32>,
}

/// Median amount assumed for an MCC absent from [`TablesFile::mcc_median_eur`], EUR.
pub const DEFAULT_MCC_MEDIAN_EUR: f32 = 40.0;

/// The on-disk model (`model.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelFile {
    /// Version string written into every decision.
    pub model_version: String,
    /// Always `logistic_regression`.
    pub kind: String,
    /// Feature names, must equal [`FEATURES`].
    pub features: Vec<String>,
    /// Per-feature mean used for standardisation.
    pub mean: Vec<f32>,
    /// Per-feature standard deviation used for standardisation (> 0).
    pub std: Vec<f32>,
    /// Weights over standardised features.
    pub weights: Vec<f32>,
    /// Intercept.
    pub bias: f32,
    /// Recommended review threshold on the score (0-1).
    pub review_threshold: f32,
    /// Recommended decline threshold on the score (0-1).
    pub decline_threshold: f32,
    /// Learned risk tables.
    pub tables: TablesFile,
    /// How the model was trained: command, seed, data, metrics.
    #[serde(default)]
    pub training: serde_json::Value,
}

/// A loaded logistic-regression model.
#[derive(Debug, Clone)]
pub struct Model {
    file: ModelFile,
    /// weights[i] / std[i], folded at load.
    scaled: FeatureVec,
    /// bias - sum(weights[i] * mean[i] / std[i]).
    intercept: f32,
}

impl Model {
    /// Parses and validates a model file. Errors: [`Error::Model`] for bad JSON, a feature list
    /// that differs from [`FEATURES`], wrong vector lengths, non-positive deviations, or
    /// thresholds outside 0-1.
    pub fn from_json(json: &str) -> Result<Self> {
        let file: ModelFile =
            serde_json::from_str(json).map_err(|e| Error::Model(format!("invalid JSON: {e}")))?;
        Self::from_file(file)
    }

    /// Validates a parsed model file (see [`Self::from_json`]).
    pub fn from_file(file: ModelFile) -> Result<Self> {
        if file
            .features
            .iter()
            .map(String::as_str)
            .ne(FEATURES.iter().copied())
        {
            return Err(Error::Model(format!(
                "feature list {:?} does not match this worker's {:?}",
                file.features, FEATURES
            )));
        }
        for (name, v) in [
            ("mean", &file.mean),
            ("std", &file.std),
            ("weights", &file.weights),
        ] {
            if v.len() != N_FEATURES {
                return Err(Error::Model(format!(
                    "{name} has {} values, expected {N_FEATURES}",
                    v.len()
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::Model(format!("{name} has a non-finite value")));
            }
        }
        if let Some(i) = file.std.iter().position(|s| *s <= 0.0) {
            return Err(Error::Model(format!(
                "std[{i}] ({}) must be > 0",
                FEATURES[i]
            )));
        }
        for (name, t) in [
            ("review_threshold", file.review_threshold),
            ("decline_threshold", file.decline_threshold),
        ] {
            if !(0.0..=1.0).contains(&t) {
                return Err(Error::Model(format!("{name} {t} is outside 0-1")));
            }
        }
        let mut scaled = [0f32; N_FEATURES];
        let mut intercept = file.bias;
        for (i, sc) in scaled.iter_mut().enumerate() {
            *sc = file.weights[i] / file.std[i];
            intercept -= *sc * file.mean[i];
        }
        Ok(Self {
            file,
            scaled,
            intercept,
        })
    }

    /// The embedded default model. Panics only if the shipped file is invalid, which the
    /// crate's tests rule out.
    pub fn embedded() -> Self {
        Self::from_json(EMBEDDED_MODEL_JSON).expect("embedded model.json is valid")
    }

    /// Fraud probability of `x`: `sigmoid(intercept + sum(scaled[i] * x[i]))`. Fixed cost:
    /// one pass over [`N_FEATURES`] values.
    pub fn predict(&self, x: &FeatureVec) -> f32 {
        let mut z = self.intercept;
        for (w, v) in self.scaled.iter().zip(x) {
            z += w * v;
        }
        sigmoid(z)
    }

    /// The model version written into decisions.
    pub fn version(&self) -> &str {
        &self.file.model_version
    }

    /// The parsed file.
    pub fn file(&self) -> &ModelFile {
        &self.file
    }
}

/// The logistic function 1 / (1 + e^-z).
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(weights: Vec<f32>, bias: f32) -> ModelFile {
        ModelFile {
            model_version: "test-1".into(),
            kind: "logistic_regression".into(),
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
            mean: vec![0.0; N_FEATURES],
            std: vec![1.0; N_FEATURES],
            weights,
            bias,
            review_threshold: 0.5,
            decline_threshold: 0.9,
            tables: TablesFile::default(),
            training: serde_json::Value::Null,
        }
    }

    #[test]
    fn inference_matches_the_weights_for_a_known_input() {
        let mut w = vec![0.0; N_FEATURES];
        w[0] = 2.0;
        w[4] = -1.0;
        let mut f = file_with(w, -1.0);
        f.mean[0] = 1.0;
        f.std[0] = 0.5;
        let m = Model::from_file(f).unwrap();
        let mut x = [0f32; N_FEATURES];
        x[0] = 2.0; // standardised (2 - 1) / 0.5 = 2 -> contributes 4
        x[4] = 1.0; // contributes -1
        // z = -1 + 4 - 1 = 2
        let expected = 1.0 / (1.0 + (-2.0f32).exp());
        assert!(
            (m.predict(&x) - expected).abs() < 1e-6,
            "{} vs {expected}",
            m.predict(&x)
        );
    }

    #[test]
    fn a_model_with_another_feature_list_is_rejected() {
        let mut f = file_with(vec![0.0; N_FEATURES], 0.0);
        f.features[3] = "something_else".into();
        let err = Model::from_file(f).unwrap_err().to_string();
        assert!(err.contains("feature list"), "{err}");
    }

    #[test]
    fn a_model_with_zero_deviation_is_rejected() {
        let mut f = file_with(vec![0.0; N_FEATURES], 0.0);
        f.std[2] = 0.0;
        assert!(Model::from_file(f).is_err());
        assert!(Model::from_json("{").is_err());
    }

    #[test]
    fn the_embedded_model_loads() {
        let m = Model::embedded();
        assert!(!m.version().is_empty());
    }
}
