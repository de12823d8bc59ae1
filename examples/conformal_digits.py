"""Conformal prediction sets from MC dropout on scikit-learn's digits: LAC and APS at alpha = 0.1.

A dropout MLP (64 → 256 → 256 → 10) is trained on 500 digits. Its MC-dropout probabilities on 400
held-out calibration digits fit split conformal predictors (:mod:`mcdrop.conformal`): LAC (keep the
classes with probability above a threshold) and APS (keep the most probable classes until their mass
reaches a threshold; randomised, as Romano et al. 2020 recommend, and also without randomisation for
comparison). On the remaining test digits the script reports, for each method, the coverage
(how often the set holds the true digit; the guarantee is at least 90%, on average over calibration
draws), the mean set size, and the coverage by set size, for MC dropout and, for comparison, for the
deterministic network (dropout off). It then shows the sets of the hardest test images — those of
highest MC predictive entropy.

Writes ``sets.png`` (the hardest images with their sets), ``coverage_by_size.png`` and
``metrics.json`` to ``--out``.

Usage::

    python examples/conformal_digits.py                  # about half a minute on 2 CPU cores
    python examples/conformal_digits.py --fast           # a few seconds (also MCDROP_FAST=1)
    python examples/conformal_digits.py --out DIR --seed 1
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ALPHA = 0.1
#: name -> ConformalClassifier options. APS is shown randomised (the form whose sets stay small for an accurate
#: model) and, for comparison, not randomised (its threshold sits near 1, so its sets take in many
#: negligible classes).
METHODS = {
    "LAC": dict(method="lac"),
    "APS": dict(method="aps", randomized=True),
    "APS-nr": dict(method="aps"),
}
N_HARDEST = 8


def settings(fast: bool) -> dict:
    if fast:
        return dict(epochs=5, num_samples=10)
    return dict(epochs=60, num_samples=50)


def load_split(seed: int):
    """All ten digits, 64 pixels in [0, 1]: 500 to train, 400 to calibrate, the rest (897) to test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=500, stratify=y, random_state=seed)
    x_cal, x_test, y_cal, y_test = train_test_split(x_rest, y_rest, train_size=400, stratify=y_rest,
                                                    random_state=seed)
    return x_train, y_train, x_cal, y_cal, x_test, y_test


def build_model():
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input((64,)),
        layers.Dense(256, activation="relu"), layers.Dropout(0.5),
        layers.Dense(256, activation="relu"), layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def run(*, fast: bool = False, seed: int = 0, out: Path | None = None) -> dict:
    import keras

    import mcdrop
    from mcdrop import metrics
    from mcdrop.conformal import ConformalClassifier
    from mcdrop.predictive import ClassificationPrediction

    cfg = settings(fast)
    x_train, y_train, x_cal, y_cal, x_test, y_test = load_split(seed)
    keras.utils.set_random_seed(seed)
    model = build_model()
    model.fit(x_train, y_train, epochs=cfg["epochs"], batch_size=32, verbose=0)

    mc = mcdrop.MCDropout(model, num_samples=cfg["num_samples"], seed=seed, verbose=0)
    predictions = {
        "MC dropout": (mc.predict(x_cal), mc.predict(x_test)),
        "deterministic": tuple(ClassificationPrediction.from_samples(model.predict(x, verbose=0)[None])
                               for x in (x_cal, x_test)),
    }
    results = {"seed": seed, "fast": fast, "alpha": ALPHA, "n_calibration": len(y_cal), "n_test": len(y_test),
               "num_samples": cfg["num_samples"], "methods": {}}
    sets_of = {}
    print(f"split conformal sets at alpha = {ALPHA} ({len(y_cal)} calibration digits, {len(y_test)} test digits)")
    print(f"{'model':<14} {'method':<6} {'coverage':>9} {'mean size':>10} {'empty':>6}  coverage by set size")
    for model_name, (pred_cal, pred_test) in predictions.items():
        for method, options in METHODS.items():
            cp = ConformalClassifier(alpha=ALPHA, random_state=seed, **options).fit(pred_cal, y_cal)
            sets = cp.predict_sets(pred_test)
            sets_of[model_name, method] = sets
            by_size = metrics.size_stratified_coverage(y_test, sets)
            row = {
                "coverage": metrics.set_coverage(y_test, sets),
                "mean_set_size": metrics.mean_set_size(sets),
                "empty_sets": int(np.sum(sets.sum(axis=1) == 0)),
                "threshold": float(cp.threshold_),
                "by_size": {int(k): {"coverage": float(c), "count": int(n)}
                            for k, c, n in zip(by_size.size, by_size.coverage, by_size.count)},
            }
            results["methods"][f"{model_name} / {method}"] = row
            strata = ", ".join(f"{k}: {v['coverage']:.2f} (n={v['count']})" for k, v in row["by_size"].items())
            print(f"{model_name:<14} {method:<6} {row['coverage']:>9.3f} {row['mean_set_size']:>10.2f} "
                  f"{row['empty_sets']:>6}  {strata}")

    # the hardest test digits: highest MC predictive entropy
    mc_test = predictions["MC dropout"][1]
    hardest = np.argsort(-mc_test.entropy)[:N_HARDEST]
    results["hardest"] = [
        {"index": int(i), "label": int(y_test[i]), "entropy": float(mc_test.entropy[i]),
         **{method: np.nonzero(sets_of["MC dropout", method][i])[0].tolist() for method in ("LAC", "APS")}}
        for i in hardest
    ]
    print("\nthe hardest test digits (highest MC entropy) and their MC-dropout sets (an empty set: the model "
          "abstains)")
    for row in results["hardest"]:
        print(f"  digit {row['label']}  entropy {row['entropy']:.2f}  LAC {row['LAC']}  APS {row['APS']}")

    if out is not None:
        from matplotlib.figure import Figure

        from mcdrop.io import save_json, staged_directory
        from mcdrop.plotting import SetCoverageDisplay

        fig = Figure(figsize=(2.2 * N_HARDEST, 3.2), layout="constrained")
        for col, row in enumerate(results["hardest"]):
            ax = fig.add_subplot(1, N_HARDEST, col + 1)
            ax.imshow(x_test[row["index"]].reshape(8, 8), cmap="gray_r")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"true {row['label']}\nLAC {_set_text(row['LAC'])}\nAPS {_set_text(row['APS'])}",
                         fontsize=8)
        coverage_fig = Figure(figsize=(15, 3.8), layout="constrained")
        for col, method in enumerate(METHODS):
            SetCoverageDisplay.from_predictions(y_test, sets_of["MC dropout", method], alpha=ALPHA,
                                                name=f"MC dropout, {method}",
                                                ax=coverage_fig.add_subplot(1, len(METHODS), col + 1))
        with staged_directory(out) as stage:
            fig.savefig(stage / "sets.png", dpi=100)
            coverage_fig.savefig(stage / "coverage_by_size.png", dpi=100)
            save_json(stage / "metrics.json", results)
        print(f"\nwrote {out}/sets.png, coverage_by_size.png and metrics.json")
    return results


def _set_text(classes: list) -> str:
    """A set for a figure title, wrapped after five classes; the empty set is shown as such."""
    if not classes:
        return "∅"
    text = ",".join(map(str, classes))
    return text if len(classes) <= 5 else ",".join(map(str, classes[:5])) + ",\n" + ",".join(map(str, classes[5:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("MCDROP_FAST") == "1",
                        help="a few epochs and passes: a smoke test")
    parser.add_argument("--out", type=Path, default=Path("out/conformal_digits"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run(fast=args.fast, seed=args.seed, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
