//! Vector models: the model stage for pre-featurised transactions (`Transaction.features`),
//! such as the ULB credit-card data's `V1`..`V28`, `Amount` (docs/model-card-ulb.md).
//!
//! A vector model file is JSON written by `scripts/train_ulb.py`:
//!
//! | field | kinds | meaning |
//! |---|---|---|
//! | `model_version` | all | written into every decision |
//! | `kind` | all | `vector_logistic_regression` or `vector_gbt` |
//! | `features` | all | feature names in vector order; their [`fingerprint`] must equal `Transaction.feature_set` |
//! | `review_threshold`, `decline_threshold` | all | recommended thresholds on the probability, 0-1 |
//! | `training` | all | free-form: data set hash, split, command, metrics |
//! | `log1p` | LR | names of features replaced by `ln(1 + max(x, 0))` before standardisation |
//! | `mean`, `std`, `weights`, `bias` | LR | `p = sigmoid(bias + Σ weights[i] · (x[i] − mean[i]) / std[i])` |
//! | `base_score` | GBT | raw score before the trees (log-odds) |
//! | `trees` | GBT | each `{feature, threshold, left, right, value}`: parallel arrays, node 0 the root; node `i` is a leaf when `feature[i] == -1` (adds `value[i]`), else goes to `left[i]` when `x[feature[i]] <= threshold[i]`, to `right[i]` otherwise; `p = sigmoid(base_score + Σ leaves)` |
//!
//! The GBT layout and decision rule are those of LightGBM's `dump_model()` for numerical
//! splits (`decision_type "<="`), with the learning rate already folded into the leaf values
//! (LightGBM docs, "Booster.dump_model"); the comparison is done in `f64` on the `f32` feature,
//! as LightGBM does, so the worker reproduces LightGBM's probabilities (checked against
//! `worker/model/ulb-excerpt-scores.csv` in the tests).
//!
//! Cost: the LR is one pass over the features; the GBT visits one root-to-leaf path per tree
//! (`txpipe-worker bench-stages --vector-model` prints ns per transaction).

use serde::Deserialize;
use txpipe_client::features::fingerprint;

use crate::{Error, Result};

/// The embedded ULB gradient-boosted-trees model (`builtin:ulb-gbt`).
pub const ULB_GBT_JSON: &str = include_str!("../model/ulb-gbt.json");
/// The embedded ULB logistic-regression model (`builtin:ulb-lr`).
pub const ULB_LR_JSON: &str = include_str!("../model/ulb-lr.json");

/// The JSON of the embedded vector model `name` (`ulb-gbt`, `ulb-lr`), or `None`.
pub fn builtin_json(name: &str) -> Option<&'static str> {
    match name {
        "ulb-gbt" => Some(ULB_GBT_JSON),
        "ulb-lr" => Some(ULB_LR_JSON),
        _ => None,
    }
}

/// Longest accepted feature vector.
pub const MAX_FEATURES: usize = 4_096;

#[derive(Debug, Deserialize)]
struct Common {
    model_version: String,
    kind: String,
    features: Vec<String>,
    review_threshold: f32,
    decline_threshold: f32,
}

#[derive(Debug, Deserialize)]
struct LrFile {
    #[serde(default)]
    log1p: Vec<String>,
    mean: Vec<f64>,
    std: Vec<f64>,
    weights: Vec<f64>,
    bias: f64,
}

#[derive(Debug, Deserialize)]
struct TreeFile {
    feature: Vec<i32>,
    threshold: Vec<f64>,
    left: Vec<i32>,
    right: Vec<i32>,
    value: Vec<f64>,
}

#[derive(Debug, Deserialize)]
struct GbtFile {
    base_score: f64,
    trees: Vec<TreeFile>,
}

/// One node of the flattened forest: a split when `feature != LEAF`, else a leaf whose value
/// is `threshold`.
#[derive(Debug, Clone, Copy)]
struct Node {
    feature: u32,
    /// Split threshold, or the leaf value.
    threshold: f64,
    left: u32,
    right: u32,
}

const LEAF: u32 = u32::MAX;

#[derive(Debug, Clone)]
enum Kind {
    Logistic {
        log1p: Vec<bool>,
        /// weights[i] / std[i].
        scaled: Vec<f64>,
        /// bias − Σ scaled[i] · mean[i].
        intercept: f64,
    },
    Gbt {
        base: f64,
        nodes: Vec<Node>,
        roots: Vec<u32>,
    },
}

/// A loaded vector model.
#[derive(Debug, Clone)]
pub struct VectorModel {
    version: String,
    features: Vec<String>,
    feature_set: String,
    review_threshold: f32,
    decline_threshold: f32,
    kind: Kind,
}

/// True when `json` is a vector model (its `kind` starts with `vector_`), false for anything
/// else (the card model, or JSON this function cannot read, which the card loader reports).
pub fn is_vector_model(json: &str) -> bool {
    #[derive(Deserialize)]
    struct K {
        kind: String,
    }
    serde_json::from_str::<K>(json).is_ok_and(|k| k.kind.starts_with("vector_"))
}

impl VectorModel {
    /// Parses and validates a vector model file. Errors: [`Error::Model`] for bad JSON, an
    /// unknown kind, an empty or too long feature list, vectors of the wrong length,
    /// non-finite numbers, non-positive deviations, thresholds outside 0-1 or review above
    /// decline, and trees whose children do not come after their parent (which guarantees
    /// every walk ends at a leaf).
    pub fn from_json(json: &str) -> Result<Self> {
        let bad = |m: String| Error::Model(m);
        let c: Common =
            serde_json::from_str(json).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let n = c.features.len();
        if n == 0 || n > MAX_FEATURES {
            return Err(bad(format!("{n} features (expected 1-{MAX_FEATURES})")));
        }
        for (name, t) in [
            ("review_threshold", c.review_threshold),
            ("decline_threshold", c.decline_threshold),
        ] {
            if !(0.0..=1.0).contains(&t) {
                return Err(bad(format!("{name} {t} is outside 0-1")));
            }
        }
        if c.review_threshold > c.decline_threshold {
            return Err(bad(format!(
                "review_threshold {} is above decline_threshold {}",
                c.review_threshold, c.decline_threshold
            )));
        }
        let kind = match c.kind.as_str() {
            "vector_logistic_regression" => {
                let f: LrFile =
                    serde_json::from_str(json).map_err(|e| bad(format!("invalid JSON: {e}")))?;
                Self::logistic(&c.features, f)?
            }
            "vector_gbt" => {
                let f: GbtFile =
                    serde_json::from_str(json).map_err(|e| bad(format!("invalid JSON: {e}")))?;
                Self::gbt(n, f)?
            }
            other => {
                return Err(bad(format!(
                    "kind {other:?} is not a vector model (vector_logistic_regression, vector_gbt)"
                )));
            }
        };
        Ok(Self {
            version: c.model_version,
            feature_set: fingerprint(&c.features),
            features: c.features,
            review_threshold: c.review_threshold,
            decline_threshold: c.decline_threshold,
            kind,
        })
    }

    fn logistic(features: &[String], f: LrFile) -> Result<Kind> {
        let n = features.len();
        for (name, v) in [("mean", &f.mean), ("std", &f.std), ("weights", &f.weights)] {
            if v.len() != n {
                return Err(Error::Model(format!(
                    "{name} has {} values, expected {n}",
                    v.len()
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::Model(format!("{name} has a non-finite value")));
            }
        }
        if !f.bias.is_finite() {
            return Err(Error::Model("bias is not finite".into()));
        }
        if let Some(i) = f.std.iter().position(|s| *s <= 0.0) {
            return Err(Error::Model(format!(
                "std[{i}] ({}) must be > 0",
                features[i]
            )));
        }
        let mut log1p = vec![false; n];
        for name in &f.log1p {
            let i = features.iter().position(|x| x == name).ok_or_else(|| {
                Error::Model(format!("log1p names {name:?}, which is not a feature"))
            })?;
            log1p[i] = true;
        }
        let scaled: Vec<f64> = f.weights.iter().zip(&f.std).map(|(w, s)| w / s).collect();
        let intercept = f.bias - scaled.iter().zip(&f.mean).map(|(s, m)| s * m).sum::<f64>();
        Ok(Kind::Logistic {
            log1p,
            scaled,
            intercept,
        })
    }

    fn gbt(n_features: usize, f: GbtFile) -> Result<Kind> {
        if f.trees.is_empty() {
            return Err(Error::Model(
                "a vector_gbt model needs at least one tree".into(),
            ));
        }
        if !f.base_score.is_finite() {
            return Err(Error::Model("base_score is not finite".into()));
        }
        let mut nodes = Vec::new();
        let mut roots = Vec::with_capacity(f.trees.len());
        for (t, tree) in f.trees.iter().enumerate() {
            let len = tree.feature.len();
            if len == 0
                || [
                    tree.threshold.len(),
                    tree.left.len(),
                    tree.right.len(),
                    tree.value.len(),
                ]
                .iter()
                .any(|l| *l != len)
            {
                return Err(Error::Model(format!(
                    "tree {t}: empty or arrays of different lengths"
                )));
            }
            let base = nodes.len() as u32;
            roots.push(base);
            for i in 0..len {
                let feature = tree.feature[i];
                let node = if feature == -1 {
                    if !tree.value[i].is_finite() {
                        return Err(Error::Model(format!("tree {t} node {i}: non-finite leaf")));
                    }
                    Node {
                        feature: LEAF,
                        threshold: tree.value[i],
                        left: 0,
                        right: 0,
                    }
                } else {
                    let (l, r) = (tree.left[i], tree.right[i]);
                    let in_tree = |c: i32| c > i as i32 && (c as usize) < len;
                    if feature < 0 || feature as usize >= n_features {
                        return Err(Error::Model(format!(
                            "tree {t} node {i}: feature {feature} outside 0-{}",
                            n_features - 1
                        )));
                    }
                    if !in_tree(l) || !in_tree(r) {
                        return Err(Error::Model(format!(
                            "tree {t} node {i}: children {l}/{r} must come after the node and inside the tree"
                        )));
                    }
                    if tree.threshold[i].is_nan() {
                        return Err(Error::Model(format!("tree {t} node {i}: NaN threshold")));
                    }
                    Node {
                        feature: feature as u32,
                        threshold: tree.threshold[i],
                        left: base + l as u32,
                        right: base + r as u32,
                    }
                };
                nodes.push(node);
            }
        }
        Ok(Kind::Gbt {
            base: f.base_score,
            nodes,
            roots,
        })
    }

    /// The embedded model named `name` (`ulb-gbt` or `ulb-lr`), or `None` for another name.
    /// Panics only if a shipped file is invalid, which the crate's tests rule out.
    pub fn builtin(name: &str) -> Option<Self> {
        builtin_json(name)
            .map(|json| Self::from_json(json).expect("embedded vector model is valid"))
    }

    /// Fraud probability of `x` (0-1). Errors: a message when `x` has the wrong length (the
    /// caller checks the feature set first, so this means a producer bug).
    pub fn predict(&self, x: &[f32]) -> std::result::Result<f32, String> {
        if x.len() != self.features.len() {
            return Err(format!(
                "{} features, the model expects {}",
                x.len(),
                self.features.len()
            ));
        }
        let z = match &self.kind {
            Kind::Logistic {
                log1p,
                scaled,
                intercept,
            } => {
                let mut z = *intercept;
                for i in 0..x.len() {
                    let v = f64::from(x[i]);
                    let v = if log1p[i] { v.max(0.0).ln_1p() } else { v };
                    z += scaled[i] * v;
                }
                z
            }
            Kind::Gbt { base, nodes, roots } => {
                let mut z = *base;
                for &root in roots {
                    let mut n = &nodes[root as usize];
                    while n.feature != LEAF {
                        let v = f64::from(x[n.feature as usize]);
                        n = &nodes[if v <= n.threshold { n.left } else { n.right } as usize];
                    }
                    z += n.threshold;
                }
                z
            }
        };
        Ok((1.0 / (1.0 + (-z).exp())) as f32)
    }

    /// Checks that a transaction's `feature_set` and vector length fit this model. Errors: a
    /// message naming both fingerprints (the transaction is nacked with it).
    pub fn accepts(&self, feature_set: &str, len: usize) -> std::result::Result<(), String> {
        if feature_set != self.feature_set {
            return Err(format!(
                "feature set {feature_set:?} does not match model {} ({}: {})",
                self.version,
                self.feature_set,
                self.features.join(",")
            ));
        }
        if len != self.features.len() {
            return Err(format!(
                "{len} features, model {} expects {}",
                self.version,
                self.features.len()
            ));
        }
        Ok(())
    }

    /// Version written into decisions.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Feature names in vector order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// Fingerprint of [`Self::features`].
    pub fn feature_set(&self) -> &str {
        &self.feature_set
    }

    /// Recommended (review, decline) thresholds.
    pub fn thresholds(&self) -> (f32, f32) {
        (self.review_threshold, self.decline_threshold)
    }

    /// `vector_gbt` or `vector_logistic_regression`.
    pub fn kind(&self) -> &'static str {
        match self.kind {
            Kind::Logistic { .. } => "vector_logistic_regression",
            Kind::Gbt { .. } => "vector_gbt",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stump(threshold: f64) -> String {
        format!(
            r#"{{"model_version":"t","kind":"vector_gbt","features":["a","b"],
            "review_threshold":0.5,"decline_threshold":0.9,"base_score":-1.0,
            "trees":[{{"feature":[1,-1,-1],"threshold":[{threshold},0,0],"left":[1,-1,-1],
            "right":[2,-1,-1],"value":[0,-2.0,3.0]}}]}}"#
        )
    }

    fn sig(z: f64) -> f32 {
        (1.0 / (1.0 + (-z).exp())) as f32
    }

    #[test]
    fn a_tree_goes_left_at_or_below_the_threshold() {
        let m = VectorModel::from_json(&stump(0.5)).unwrap();
        assert_eq!(m.kind(), "vector_gbt");
        assert_eq!(m.predict(&[9.0, 0.5]).unwrap(), sig(-3.0));
        assert_eq!(m.predict(&[9.0, 0.25]).unwrap(), sig(-3.0));
        assert_eq!(m.predict(&[9.0, 0.75]).unwrap(), sig(2.0));
        assert!(m.predict(&[1.0]).is_err());
    }

    #[test]
    fn logistic_regression_standardises_and_applies_log1p() {
        let json = r#"{"model_version":"t","kind":"vector_logistic_regression",
            "features":["x","Amount"],"review_threshold":0.2,"decline_threshold":0.8,
            "log1p":["Amount"],"mean":[1.0,0.0],"std":[2.0,1.0],"weights":[4.0,1.0],"bias":-1.0}"#;
        let m = VectorModel::from_json(json).unwrap();
        // z = -1 + 4 * (3 - 1) / 2 + ln(1 + e - 1) = -1 + 4 + 1 = 4
        let p = m.predict(&[3.0, std::f32::consts::E - 1.0]).unwrap();
        assert!((p - sig(4.0)).abs() < 1e-6, "{p}");
        assert_eq!(m.thresholds(), (0.2, 0.8));
    }

    #[test]
    fn the_feature_set_must_match() {
        let m = VectorModel::from_json(&stump(0.5)).unwrap();
        assert_eq!(m.feature_set(), fingerprint(["a", "b"]));
        assert!(m.accepts(&fingerprint(["a", "b"]), 2).is_ok());
        let err = m.accepts(&fingerprint(["b", "a"]), 2).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        assert!(m.accepts(&fingerprint(["a", "b"]), 3).is_err());
        assert!(m.accepts("", 0).is_err());
    }

    #[test]
    fn malformed_models_are_rejected_with_a_reason() {
        let cases = [
            (
                stump(0.5).replace("[1,-1,-1],\"threshold", "[5,-1,-1],\"threshold"),
                "outside",
            ),
            (
                stump(0.5).replace("\"left\":[1,", "\"left\":[0,"),
                "children",
            ),
            (
                stump(0.5).replace("\"value\":[0,-2.0,3.0]", "\"value\":[0,-2.0]"),
                "lengths",
            ),
            (
                stump(0.5).replace("vector_gbt", "vector_svm"),
                "not a vector model",
            ),
            (
                stump(0.5).replace("\"review_threshold\":0.5", "\"review_threshold\":0.95"),
                "above",
            ),
            (
                stump(0.5).replace("\"features\":[\"a\",\"b\"]", "\"features\":[]"),
                "features",
            ),
            ("{".to_string(), "invalid JSON"),
        ];
        for (json, want) in cases {
            let err = VectorModel::from_json(&json).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn the_kind_tells_vector_models_from_the_card_model() {
        assert!(is_vector_model(&stump(0.5)));
        assert!(!is_vector_model(crate::model::EMBEDDED_MODEL_JSON));
        assert!(!is_vector_model("{"));
    }
}
