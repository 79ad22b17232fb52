//! Training and evaluation of the model stage.
//!
//! Input: labelled transactions in any order ([`Example`]). They are sorted by event time and
//! split chronologically, so nothing from the future leaks into the past:
//!
//! | part | share (default) | used for |
//! |---|---|---|
//! | A | first 50% | learning the merchant/terminal risk tables (smoothed fraud rates) |
//! | B | next 30% | fitting the logistic regression, features computed with A's tables; picking thresholds |
//! | C | last 20% | holdout: metrics, with tables relearned on A+B (what ships) |
//!
//! Transactions that a hard rule declines (unreadable, malformed or Luhn-invalid PAN) are left
//! out of the fit: the rules decide them whatever the model says.
//!
//! The fit is L2-regularised logistic regression by Newton's method (iteratively reweighted
//! least squares; Hastie, Tibshirani, Friedman, *The Elements of Statistical Learning*,
//! §4.4.1) over standardised features, in `f64`, sequential, so the same data gives
//! bit-identical weights. Table risks are Bayesian-smoothed rates
//! `(frauds + a * prior) / (count + a)` with `a` = [`TrainConfig::smoothing`].

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use txpipe_client::pan::PanKey;
use txpipe_client::pipeline::v1::Transaction;

use crate::model::{FEATURES, FeatureVec, Model, ModelFile, N_FEATURES, TablesFile};
use crate::scoring::{Scorer, Thresholds};
use crate::{Error, Result};

/// One labelled transaction.
#[derive(Debug, Clone)]
pub struct Example {
    /// The transaction as a worker would see it.
    pub tx: Transaction,
    /// Ground truth.
    pub is_fraud: bool,
    /// Fraud scenario name, or "" for genuine transactions.
    pub scenario: String,
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Share of the data (oldest first) used for the risk tables (part A).
    pub table_share: f64,
    /// Share of the data (newest) held out for evaluation (part C).
    pub holdout_share: f64,
    /// L2 penalty on the weights (not the intercept).
    pub l2: f64,
    /// Newton iterations, at most.
    pub max_iterations: u32,
    /// Pseudo-count of the table smoothing.
    pub smoothing: f64,
    /// Minimum frauds for a merchant/terminal to enter a table.
    pub min_frauds: u32,
    /// Precision the decline threshold must reach on part B.
    pub decline_precision: f64,
    /// Precision the review threshold must reach on part B.
    pub review_precision: f64,
    /// Learn merchant/terminal risk tables from the data. They only help on the same
    /// simulated world (same generator seed): another seed has other compromised terminals,
    /// so shipped tables would flag random terminals there. Off by default.
    pub learn_entity_tables: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            table_share: 0.5,
            holdout_share: 0.2,
            l2: 1.0,
            max_iterations: 25,
            smoothing: 10.0,
            min_frauds: 2,
            decline_precision: 0.90,
            review_precision: 0.50,
            learn_entity_tables: false,
        }
    }
}

/// Precision/recall of one threshold.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AtThreshold {
    /// Score threshold.
    pub threshold: f32,
    /// Flagged (score >= threshold).
    pub flagged: u64,
    /// Flagged and fraud.
    pub true_positives: u64,
    /// TP / flagged.
    pub precision: f64,
    /// TP / frauds.
    pub recall: f64,
    /// Genuine transactions flagged / genuine transactions.
    pub false_positive_rate: f64,
}

/// Per-scenario recall on the holdout, by what catches it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioRecall {
    /// Fraud transactions of this scenario in the holdout.
    pub count: u64,
    /// Share with a hard rule fired (decided by the rules stage alone).
    pub hard_rules: f64,
    /// Share with merchant or terminal table risk >= 0.5 (profile stage).
    pub profile: f64,
    /// Share whose model probability alone reaches the review threshold.
    pub model: f64,
    /// Share reviewed or declined (final score >= review threshold).
    pub review_or_decline: f64,
    /// Share declined (final score >= decline threshold).
    pub decline: f64,
}

/// Holdout metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrainReport {
    /// Transactions in parts A, B, C.
    pub rows: [u64; 3],
    /// Frauds in parts A, B, C.
    pub frauds: [u64; 3],
    /// Newton iterations run.
    pub iterations: u32,
    /// Mean log-loss on part B at the end of the fit.
    pub train_log_loss: f64,
    /// Area under the precision-recall curve on the holdout (average precision), final score.
    pub holdout_auprc: f64,
    /// Average precision of the model probability alone (hard-rule rows included).
    pub holdout_model_auprc: f64,
    /// At the review threshold (review or decline counts as flagged).
    pub holdout_review: AtThreshold,
    /// At the decline threshold.
    pub holdout_decline: AtThreshold,
    /// Recall per fraud scenario.
    pub per_scenario: BTreeMap<String, ScenarioRecall>,
    /// Table sizes: merchants, terminals.
    pub table_entries: [usize; 2],
}

/// Result of [`train`].
#[derive(Debug, Clone)]
pub struct Trained {
    /// The model file to write (without `training` metadata beyond the report).
    pub model: ModelFile,
    /// Holdout metrics.
    pub report: TrainReport,
}

fn learn_tables(rows: &[Example], cfg: &TrainConfig) -> TablesFile {
    let total = rows.len().max(1) as f64;
    let prior = rows.iter().filter(|e| e.is_fraud).count() as f64 / total;
    let build = |key: fn(&Transaction) -> &str| {
        if !cfg.learn_entity_tables {
            return BTreeMap::new();
        }
        let mut counts: HashMap<&str, (u32, u32)> = HashMap::new();
        for e in rows {
            let c = counts.entry(key(&e.tx)).or_default();
            c.0 += 1;
            c.1 += u32::from(e.is_fraud);
        }
        let floor = (3.0 * prior).max(0.05);
        let mut out = BTreeMap::new();
        for (k, (n, f)) in counts {
            let risk = (f64::from(f) + cfg.smoothing * prior) / (f64::from(n) + cfg.smoothing);
            if f >= cfg.min_frauds && risk >= floor {
                out.insert(k.to_string(), (risk * 10_000.0).round() as f32 / 10_000.0);
            }
        }
        out
    };
    let merchant_risk = build(|t| &t.merchant_id);
    let terminal_risk = build(|t| &t.terminal_id);
    // Median EUR amount per MCC (static category knowledge, valid in any simulated world).
    let mut amounts: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for e in rows {
        amounts
            .entry(e.tx.mcc)
            .or_default()
            .push(crate::tables::currency_to_eur_minor(e.tx.amount_minor, &e.tx.currency) / 100.0);
    }
    let mcc_median_eur = amounts
        .into_iter()
        .filter(|(_, v)| v.len() >= 20)
        .map(|(mcc, mut v)| {
            v.sort_by(f64::total_cmp);
            (mcc, (v[v.len() / 2] * 100.0).round() as f32 / 100.0)
        })
        .collect();
    TablesFile {
        merchant_risk_default: prior as f32,
        merchant_risk,
        terminal_risk_default: prior as f32,
        terminal_risk,
        mcc_median_eur,
    }
}

fn zero_model(tables: TablesFile) -> Model {
    Model::from_file(ModelFile {
        model_version: "training".into(),
        kind: "logistic_regression".into(),
        features: FEATURES.iter().map(|s| s.to_string()).collect(),
        mean: vec![0.0; N_FEATURES],
        std: vec![1.0; N_FEATURES],
        weights: vec![0.0; N_FEATURES],
        bias: 0.0,
        review_threshold: 0.5,
        decline_threshold: 0.9,
        tables,
        training: serde_json::Value::Null,
    })
    .expect("zero model is valid")
}

struct Featurised {
    x: FeatureVec,
    hard: bool,
    profile_hit: bool,
}

fn featurise(scorer: &Scorer, e: &Example) -> Featurised {
    let dec = scorer.stage_crypto(&e.tx);
    let profile = scorer.stage_profile(&e.tx, dec.pan.as_deref());
    let hits = scorer.stage_rules(&e.tx, dec.pan.as_deref(), &profile);
    Featurised {
        x: Scorer::features(&e.tx, &profile, hits),
        hard: hits.any_hard(),
        profile_hit: profile.terminal_risk >= crate::scoring::PROFILE_RISK_REASON
            || profile.merchant_risk >= crate::scoring::PROFILE_RISK_REASON,
    }
}

/// Solves `a x = b` for a symmetric positive-definite `a` (n x n, row-major) by Cholesky
/// decomposition. Returns `None` if `a` is not positive definite.
pub fn cholesky_solve(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    let mut y = vec![0f64; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * y[k];
        }
        y[i] = s / l[i * n + i];
    }
    let mut x = vec![0f64; n];
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    Some(x)
}

fn objective(rows: &[[f64; N_FEATURES]], y: &[bool], w: &[f64], l2: f64) -> f64 {
    let mut loss = 0.0;
    for (r, &label) in rows.iter().zip(y) {
        let z: f64 = w[N_FEATURES] + r.iter().zip(w).map(|(a, b)| a * b).sum::<f64>();
        // log(1 + e^-z) for label 1, log(1 + e^z) for label 0, computed stably.
        let m = if label { -z } else { z };
        loss += if m > 0.0 {
            m + (-m).exp().ln_1p()
        } else {
            m.exp().ln_1p()
        };
    }
    loss + 0.5 * l2 * w[..N_FEATURES].iter().map(|v| v * v).sum::<f64>()
}

/// Fits L2-regularised logistic regression on standardised rows by Newton's method with
/// step halving (backtracking until the penalised log-loss decreases). `rows` are already
/// standardised; returns (weights, bias, iterations, mean log-loss without the penalty).
pub fn fit_logistic(
    rows: &[[f64; N_FEATURES]],
    y: &[bool],
    l2: f64,
    max_iterations: u32,
) -> (Vec<f64>, f64, u32, f64) {
    let d = N_FEATURES + 1; // last = intercept
    let mut w = vec![0f64; d];
    let pos = y.iter().filter(|v| **v).count() as f64;
    let n = rows.len().max(1) as f64;
    w[N_FEATURES] = (pos.max(0.5) / (n - pos).max(0.5)).ln();
    let mut iterations = 0;
    let mut current = objective(rows, y, &w, l2);
    for it in 0..max_iterations {
        iterations = it + 1;
        let mut grad = vec![0f64; d];
        let mut hess = vec![0f64; d * d];
        let mut xi = [0f64; N_FEATURES + 1];
        for (r, &label) in rows.iter().zip(y) {
            xi[..N_FEATURES].copy_from_slice(r);
            xi[N_FEATURES] = 1.0;
            let z: f64 = xi.iter().zip(&w).map(|(a, b)| a * b).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            let g = p - f64::from(u8::from(label));
            let h = (p * (1.0 - p)).max(1e-12);
            for a in 0..d {
                grad[a] += g * xi[a];
                let hx = h * xi[a];
                for b in 0..=a {
                    hess[a * d + b] += hx * xi[b];
                }
            }
        }
        for a in 0..d {
            for b in 0..a {
                hess[b * d + a] = hess[a * d + b];
            }
        }
        for a in 0..N_FEATURES {
            grad[a] += l2 * w[a];
            hess[a * d + a] += l2;
        }
        hess[N_FEATURES * d + N_FEATURES] += 1e-9;
        let Some(step) = cholesky_solve(&hess, &grad, d) else {
            break;
        };
        let mut t = 1.0;
        let mut improved = false;
        for _ in 0..30 {
            let cand: Vec<f64> = w.iter().zip(&step).map(|(a, s)| a - t * s).collect();
            let obj = objective(rows, y, &cand, l2);
            if obj <= current {
                let gain = current - obj;
                w = cand;
                current = obj;
                improved = gain > 1e-10 * current.max(1.0);
                break;
            }
            t *= 0.5;
        }
        if !improved {
            break;
        }
    }
    let penalty = 0.5 * l2 * w[..N_FEATURES].iter().map(|v| v * v).sum::<f64>();
    let bias = w[N_FEATURES];
    w.truncate(N_FEATURES);
    (w, bias, iterations, (current - penalty) / n)
}

/// Average precision (area under the precision-recall curve, step-wise) of `scores` against
/// `labels`: mean over frauds of the precision at their rank, scores sorted descending.
pub fn average_precision(scores: &[f32], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let positives = labels.iter().filter(|l| **l).count();
    if positives == 0 {
        return 0.0;
    }
    let mut tp = 0u64;
    let mut sum = 0f64;
    for (rank, &i) in idx.iter().enumerate() {
        if labels[i] {
            tp += 1;
            sum += tp as f64 / (rank + 1) as f64;
        }
    }
    sum / positives as f64
}

fn at_threshold(scores: &[f32], labels: &[bool], t: f32) -> AtThreshold {
    let frauds = labels.iter().filter(|l| **l).count() as f64;
    let genuine = labels.len() as f64 - frauds;
    let mut flagged = 0u64;
    let mut tp = 0u64;
    for (s, l) in scores.iter().zip(labels) {
        if *s >= t {
            flagged += 1;
            tp += u64::from(*l);
        }
    }
    AtThreshold {
        threshold: t,
        flagged,
        true_positives: tp,
        precision: if flagged > 0 {
            tp as f64 / flagged as f64
        } else {
            0.0
        },
        recall: if frauds > 0.0 {
            tp as f64 / frauds
        } else {
            0.0
        },
        false_positive_rate: if genuine > 0.0 {
            (flagged - tp) as f64 / genuine
        } else {
            0.0
        },
    }
}

/// The lowest threshold (on a 0.01 grid) whose precision on (`scores`, `labels`) reaches
/// `precision`, or 0.99 if none does.
fn threshold_for_precision(scores: &[f32], labels: &[bool], precision: f64) -> f32 {
    for step in 1..100 {
        let t = step as f32 / 100.0;
        let a = at_threshold(scores, labels, t);
        if a.flagged > 0 && a.precision >= precision {
            return t;
        }
    }
    0.99
}

/// The key that opens the PANs of `examples`: `key`'s bytes under the key id the sealed PANs
/// carry (training data is sealed with one key; `"train"` when no PAN names one).
fn opener(key: &[u8; 32], examples: &[Example]) -> PanKey {
    let id = examples
        .iter()
        .find_map(|e| txpipe_client::pan::split_sealed(&e.tx.pan_encrypted).ok())
        .map_or_else(|| "train".to_string(), |(id, _)| id.to_string());
    PanKey::from_bytes(id, key)
}

/// Trains a model on `examples` (see the module docs). `key` must be the key that sealed the
/// PANs. Errors: [`Error::Train`] when a part has no fraud or the data is too small.
pub fn train(mut examples: Vec<Example>, key: &[u8; 32], cfg: &TrainConfig) -> Result<Trained> {
    if examples.len() < 100 {
        return Err(Error::Train(format!(
            "{} examples is too few",
            examples.len()
        )));
    }
    examples.sort_by_key(|e| e.tx.event_time_us);
    let n = examples.len();
    let a_end = (n as f64 * cfg.table_share) as usize;
    let c_start = (n as f64 * (1.0 - cfg.holdout_share)) as usize;
    if !(0 < a_end && a_end < c_start && c_start < n) {
        return Err(Error::Train(format!(
            "bad split: table_share {} holdout_share {}",
            cfg.table_share, cfg.holdout_share
        )));
    }
    let (part_a, rest) = examples.split_at(a_end);
    let (part_b, part_c) = rest.split_at(c_start - a_end);
    let frauds = |p: &[Example]| p.iter().filter(|e| e.is_fraud).count() as u64;
    let mut report = TrainReport {
        rows: [
            part_a.len() as u64,
            part_b.len() as u64,
            part_c.len() as u64,
        ],
        frauds: [frauds(part_a), frauds(part_b), frauds(part_c)],
        ..Default::default()
    };
    if report.frauds.contains(&0) {
        return Err(Error::Train(format!(
            "a split part has no fraud: {:?}",
            report.frauds
        )));
    }
    let pan_key = || opener(key, &examples);
    let th = Thresholds::new(0.5, 0.9).expect("valid");

    // Fit on B with A's tables.
    let scorer_a = Scorer::new(pan_key(), 0, zero_model(learn_tables(part_a, cfg)), th);
    let fb: Vec<Featurised> = part_b.iter().map(|e| featurise(&scorer_a, e)).collect();
    let fit_rows: Vec<(&FeatureVec, bool)> = fb
        .iter()
        .zip(part_b)
        .filter(|(f, _)| !f.hard)
        .map(|(f, e)| (&f.x, e.is_fraud))
        .collect();
    let m = fit_rows.len().max(1) as f64;
    let mut mean = [0f64; N_FEATURES];
    let mut std = [0f64; N_FEATURES];
    for (x, _) in &fit_rows {
        for i in 0..N_FEATURES {
            mean[i] += f64::from(x[i]) / m;
        }
    }
    for (x, _) in &fit_rows {
        for i in 0..N_FEATURES {
            std[i] += (f64::from(x[i]) - mean[i]).powi(2) / m;
        }
    }
    for s in &mut std {
        *s = s.sqrt().max(1e-3);
    }
    let standardised: Vec<[f64; N_FEATURES]> = fit_rows
        .iter()
        .map(|(x, _)| std::array::from_fn(|i| (f64::from(x[i]) - mean[i]) / std[i]))
        .collect();
    let labels: Vec<bool> = fit_rows.iter().map(|(_, y)| *y).collect();
    let (w, bias, iterations, loss) =
        fit_logistic(&standardised, &labels, cfg.l2, cfg.max_iterations);
    report.iterations = iterations;
    report.train_log_loss = loss;

    let mut file = ModelFile {
        model_version: String::new(),
        kind: "logistic_regression".into(),
        features: FEATURES.iter().map(|s| s.to_string()).collect(),
        mean: mean.iter().map(|v| *v as f32).collect(),
        std: std.iter().map(|v| *v as f32).collect(),
        weights: w.iter().map(|v| *v as f32).collect(),
        bias: bias as f32,
        review_threshold: 0.5,
        decline_threshold: 0.9,
        tables: TablesFile::default(),
        training: serde_json::Value::Null,
    };

    // Thresholds from part B (final score: hard rules -> 1.0).
    let model_b = Model::from_file(file.clone())?;
    let b_scores: Vec<f32> = fb
        .iter()
        .map(|f| if f.hard { 1.0 } else { model_b.predict(&f.x) })
        .collect();
    let b_labels: Vec<bool> = part_b.iter().map(|e| e.is_fraud).collect();
    file.decline_threshold = threshold_for_precision(&b_scores, &b_labels, cfg.decline_precision);
    file.review_threshold = threshold_for_precision(&b_scores, &b_labels, cfg.review_precision)
        .min(file.decline_threshold);

    // Ship tables learned on A+B; evaluate on C.
    file.tables = learn_tables(&examples[..c_start], cfg);
    report.table_entries = [
        file.tables.merchant_risk.len(),
        file.tables.terminal_risk.len(),
    ];
    let model = Model::from_file(file.clone())?;
    let th = Thresholds::new(file.review_threshold, file.decline_threshold)?;
    let scorer = Scorer::new(pan_key(), 0, model.clone(), th);
    let fc: Vec<Featurised> = part_c.iter().map(|e| featurise(&scorer, e)).collect();
    let model_scores: Vec<f32> = fc.iter().map(|f| model.predict(&f.x)).collect();
    let scores: Vec<f32> = fc
        .iter()
        .zip(&model_scores)
        .map(|(f, s)| if f.hard { 1.0 } else { *s })
        .collect();
    let c_labels: Vec<bool> = part_c.iter().map(|e| e.is_fraud).collect();
    report.holdout_auprc = average_precision(&scores, &c_labels);
    report.holdout_model_auprc = average_precision(&model_scores, &c_labels);
    report.holdout_review = at_threshold(&scores, &c_labels, th.review);
    report.holdout_decline = at_threshold(&scores, &c_labels, th.decline);
    per_scenario(&mut report, part_c, &fc, &model_scores, &scores, &th);
    Ok(Trained {
        model: file,
        report,
    })
}

/// Evaluates a finished model on `examples` (e.g. another generator seed): average precision,
/// precision/recall at its thresholds, recall per scenario.
pub fn evaluate(model: &ModelFile, examples: &[Example], key: &[u8; 32]) -> Result<TrainReport> {
    let m = Model::from_file(model.clone())?;
    let th = Thresholds::new(model.review_threshold, model.decline_threshold)?;
    let scorer = Scorer::new(opener(key, examples), 0, m.clone(), th);
    let f: Vec<Featurised> = examples.iter().map(|e| featurise(&scorer, e)).collect();
    let model_scores: Vec<f32> = f.iter().map(|x| m.predict(&x.x)).collect();
    let scores: Vec<f32> = f
        .iter()
        .zip(&model_scores)
        .map(|(x, s)| if x.hard { 1.0 } else { *s })
        .collect();
    let labels: Vec<bool> = examples.iter().map(|e| e.is_fraud).collect();
    let mut report = TrainReport {
        rows: [0, 0, examples.len() as u64],
        frauds: [0, 0, labels.iter().filter(|l| **l).count() as u64],
        holdout_auprc: average_precision(&scores, &labels),
        holdout_model_auprc: average_precision(&model_scores, &labels),
        holdout_review: at_threshold(&scores, &labels, th.review),
        holdout_decline: at_threshold(&scores, &labels, th.decline),
        ..Default::default()
    };
    per_scenario(&mut report, examples, &f, &model_scores, &scores, &th);
    Ok(report)
}

fn per_scenario(
    report: &mut TrainReport,
    examples: &[Example],
    f: &[Featurised],
    model_scores: &[f32],
    scores: &[f32],
    th: &Thresholds,
) {
    for (i, e) in examples.iter().enumerate() {
        if !e.is_fraud {
            continue;
        }
        let name = if e.scenario.is_empty() {
            "unlabelled"
        } else {
            e.scenario.as_str()
        };
        let r = report.per_scenario.entry(name.to_string()).or_default();
        r.count += 1;
        r.hard_rules += f64::from(u8::from(f[i].hard));
        r.profile += f64::from(u8::from(f[i].profile_hit));
        r.model += f64::from(u8::from(model_scores[i] >= th.review));
        r.review_or_decline += f64::from(u8::from(scores[i] >= th.review));
        r.decline += f64::from(u8::from(scores[i] >= th.decline));
    }
    for r in report.per_scenario.values_mut() {
        let c = r.count as f64;
        r.hard_rules /= c;
        r.profile /= c;
        r.model /= c;
        r.review_or_decline /= c;
        r.decline /= c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::tests::sealed_tx;
    use txpipe_client::pipeline::v1::Channel;

    #[test]
    fn cholesky_solves_a_small_system() {
        // [[4,2],[2,3]] x = [2,1] -> x = [0.5, 0]
        let x = cholesky_solve(&[4.0, 2.0, 2.0, 3.0], &[2.0, 1.0], 2).unwrap();
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
        assert!(cholesky_solve(&[0.0, 0.0, 0.0, 0.0], &[1.0, 1.0], 2).is_none());
    }

    #[test]
    fn average_precision_is_one_for_a_perfect_ranking_and_lower_otherwise() {
        assert_eq!(
            average_precision(&[0.9, 0.8, 0.1], &[true, true, false]),
            1.0
        );
        let ap = average_precision(&[0.9, 0.8, 0.1], &[false, true, true]);
        assert!((ap - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    fn synthetic(n: usize) -> Vec<Example> {
        // Fraud = card-not-present in another country at night; deterministic pattern.
        (0..n)
            .map(|i| {
                let fraud = i % 17 == 0;
                let mut tx = sealed_tx(&format!("tx-{i:08}"), "4462911234567890");
                tx.event_time_us += i as i64 * 1_000_000;
                tx.amount_minor = 1_000 + (i as i64 * 7919) % 20_000;
                tx.terminal_id = format!("t-{}", i % 50);
                if fraud {
                    tx.channel = Channel::Ecommerce as i32;
                    tx.merchant_country = "US".into();
                    tx.local_hour = 3;
                } else if i % 5 == 0 {
                    tx.channel = Channel::Ecommerce as i32;
                    tx.three_ds = true;
                    tx.cvv_present = true;
                }
                Example {
                    tx,
                    is_fraud: fraud,
                    scenario: if fraud {
                        "night_cnp".into()
                    } else {
                        String::new()
                    },
                }
            })
            .collect()
    }

    fn dev_key() -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, b"txpipe-dev-pan-key");
        d.as_ref().try_into().unwrap()
    }

    #[test]
    fn training_learns_a_separable_pattern_and_is_deterministic() {
        let data = synthetic(3_000);
        let cfg = TrainConfig {
            learn_entity_tables: true,
            ..TrainConfig::default()
        };
        let a = train(data.clone(), &dev_key(), &cfg).unwrap();
        let b = train(data, &dev_key(), &cfg).unwrap();
        assert_eq!(a.model.weights, b.model.weights);
        assert!(a.report.holdout_auprc > 0.95, "{:?}", a.report);
        assert!(a.report.per_scenario["night_cnp"].review_or_decline > 0.95);
        assert!(a.report.holdout_review.precision > 0.9);
    }

    #[test]
    fn training_without_fraud_is_an_error() {
        let data: Vec<Example> = synthetic(1_000)
            .into_iter()
            .map(|mut e| {
                e.is_fraud = false;
                e
            })
            .collect();
        assert!(train(data, &dev_key(), &TrainConfig::default()).is_err());
    }
}
