//! The embedded ULB models reproduce the probabilities of the libraries that trained them
//! (LightGBM for `ulb-gbt`, scikit-learn for `ulb-lr`) on every row of the committed excerpt
//! of the data set; scripts/train_ulb.py wrote those probabilities to
//! worker/model/ulb-excerpt-scores.csv.

use txpipe_worker::bench::read_feature_csv;
use txpipe_worker::vector::VectorModel;

const EXCERPT: &str = include_str!("../../producer/testdata/ulb-creditcard-excerpt.csv");
const SCORES: &str = include_str!("../model/ulb-excerpt-scores.csv");

/// Column `name` of ulb-excerpt-scores.csv.
fn expected(name: &str) -> Vec<f64> {
    let mut lines = SCORES.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let c = header.iter().position(|h| *h == name).unwrap();
    lines
        .map(|l| l.split(',').nth(c).unwrap().parse().unwrap())
        .collect()
}

fn check(model: &str, column: &str) {
    let m = VectorModel::builtin(model).unwrap();
    let rows = read_feature_csv(EXCERPT, m.features()).unwrap();
    let want = expected(column);
    assert_eq!(rows.len(), want.len(), "excerpt rows vs expected scores");
    assert!(rows.len() >= 200);
    let mut worst = 0f64;
    for (i, (x, w)) in rows.iter().zip(&want).enumerate() {
        let p = f64::from(m.predict(x).unwrap());
        let err = (p - w).abs();
        // f32 output: allow a few ulps at the probability's magnitude, plus 1e-7 absolute.
        assert!(
            err <= 1e-7 + 1e-5 * w.abs(),
            "{model} row {i}: worker {p} vs trainer {w}"
        );
        worst = worst.max(err);
    }
    println!("{model}: {} rows, worst |error| {worst:e}", rows.len());
}

#[test]
fn gbt_matches_lightgbm_on_the_excerpt() {
    check("ulb-gbt", "gbt");
}

#[test]
fn logistic_regression_matches_scikit_learn_on_the_excerpt() {
    check("ulb-lr", "lr");
}

#[test]
fn the_models_separate_fraud_from_genuine_on_the_excerpt() {
    // Not a quality claim (the excerpt is tiny and partly training data): a sanity check that
    // the models are not constant and rank frauds above genuine transactions on average.
    let labels: Vec<bool> = EXCERPT
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().trim_matches('"') == "1")
        .collect();
    for name in ["ulb-gbt", "ulb-lr"] {
        let m = VectorModel::builtin(name).unwrap();
        let rows = read_feature_csv(EXCERPT, m.features()).unwrap();
        let (mut f, mut g) = (Vec::new(), Vec::new());
        for (x, &is_fraud) in rows.iter().zip(&labels) {
            let p = m.predict(x).unwrap();
            if is_fraud { f.push(p) } else { g.push(p) }
        }
        assert!(!f.is_empty() && !g.is_empty());
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        assert!(
            mean(&f) > 10.0 * mean(&g),
            "{name}: {} vs {}",
            mean(&f),
            mean(&g)
        );
    }
}

#[test]
fn the_models_record_their_data_set_split_and_thresholds() {
    for json in [
        txpipe_worker::vector::ULB_GBT_JSON,
        txpipe_worker::vector::ULB_LR_JSON,
    ] {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let t = &v["training"];
        assert_eq!(
            t["dataset"]["sha256"],
            "76274b691b16a6c49d3f159c883398e03ccd6d1ee12d9d8ee38f4b4b98551a89"
        );
        assert_eq!(t["split"]["train_fraction"], 0.8);
        assert!(t["held_out"]["auprc"].as_f64().unwrap() > 0.5);
        assert!(t["command"].as_str().unwrap().contains("train_ulb.py"));
        let m = VectorModel::from_json(json).unwrap();
        let (r, d) = m.thresholds();
        assert!(0.0 < r && r <= d && d < 1.0);
    }
}
