"""Classification calibration on scikit-learn's digits: deterministic vs MC dropout, before and after
temperature scaling, and how many passes are enough.

A dropout MLP (64 → 256 → 256 → 10) is trained on 500 digits until it over-fits, which makes its
softmax over-confident. The script compares, on the held-out test split,

* the deterministic network (dropout off, one pass),
* the deterministic network + temperature scaling (Guo et al. 2017),
* MC dropout (T passes, probabilities averaged; Gal & Ghahramani 2016),
* MC dropout + temperature scaling, the temperature applied to every pass before averaging,

with :func:`mcdrop.evaluate` (accuracy, NLL, Brier, ECE, AURC, ...), then shows how the NLL, the ECE
and the Monte Carlo standard error of the mean probabilities settle as the number of passes grows.
It writes reliability diagrams (``reliability.png``), the evaluation report (``report.html``) and
the numbers (``metrics.json``) to ``--out``.

Usage::

    python examples/calibration_digits.py                  # about half a minute on 2 CPU cores
    python examples/calibration_digits.py --fast           # a few seconds (also MCDROP_FAST=1)
    python examples/calibration_digits.py --out DIR --seed 1
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def settings(fast: bool) -> dict:
    if fast:
        return dict(epochs=5, num_samples=10, pass_counts=(1, 2, 5, 10))
    return dict(epochs=150, num_samples=100, pass_counts=(1, 2, 5, 10, 20, 50, 100))


def load_split(seed: int):
    """All ten digit classes, 64 pixels in [0, 1]: 500 to train, 300 to fit the temperature, the rest to test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=500, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, train_size=300, stratify=y_rest,
                                                    random_state=seed)
    return x_train, y_train, x_val, y_val, x_test, y_test


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
    from mcdrop.calibration import TemperatureScaling
    from mcdrop.io import save_json, staged_directory
    from mcdrop.plotting import ReliabilityDisplay
    from mcdrop.predictive import ClassificationPrediction

    cfg = settings(fast)
    x_train, y_train, x_val, y_val, x_test, y_test = load_split(seed)
    keras.utils.set_random_seed(seed)
    model = build_model()
    model.fit(x_train, y_train, epochs=cfg["epochs"], batch_size=32, verbose=0)

    # one deterministic pass, as a prediction with T = 1
    det_val = ClassificationPrediction.from_samples(model.predict(x_val, verbose=0)[None])
    det_test = ClassificationPrediction.from_samples(model.predict(x_test, verbose=0)[None])
    mc = mcdrop.MCDropout(model, num_samples=cfg["num_samples"], seed=seed, verbose=0)
    mc_val = mc.predict(x_val, return_samples=True)
    mc_test = mc.predict(x_test, return_samples=True)

    det_scaler = TemperatureScaling().fit(det_val, y_val)
    mc_scaler = TemperatureScaling().fit(mc_val, y_val)
    predictions = {
        "deterministic": det_test,
        "deterministic + TS": det_scaler.transform_prediction(det_test),
        "MC dropout": mc_test,
        "MC dropout + TS": mc_scaler.transform_prediction(mc_test),
    }
    report = mcdrop.evaluate(predictions, y_test)
    print(report)
    print(f"\nfitted temperatures: deterministic {det_scaler.temperature_:.3f}, "
          f"MC dropout {mc_scaler.temperature_:.3f} (> 1 softens, < 1 sharpens)")

    # how many passes: the first t passes of the same draw
    by_passes = []
    for t in cfg["pass_counts"]:
        pred = ClassificationPrediction.from_samples(mc_test.samples[:t])
        by_passes.append({
            "passes": t,
            "nll": metrics.negative_log_likelihood(y_test, pred),
            "ece": metrics.expected_calibration_error(y_test, pred),
            "accuracy": metrics.accuracy_score(y_test, pred),
            "max_standard_error": float(np.nanmax(pred.standard_error)) if t > 1 else float("nan"),
        })
    print("\nMC dropout by number of passes (test split)")
    print(f"{'T':>5} {'accuracy':>9} {'NLL':>8} {'ECE':>8} {'max s.e.':>9}")
    for row in by_passes:
        print(f"{row['passes']:>5} {row['accuracy']:>9.4f} {row['nll']:>8.4f} {row['ece']:>8.4f} "
              f"{row['max_standard_error']:>9.4f}")

    results = {
        "seed": seed, "fast": fast, "metrics": report.to_dict(),
        "temperature": {"deterministic": det_scaler.temperature_, "mc_dropout": mc_scaler.temperature_},
        "by_passes": by_passes,
    }
    if out is not None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(20, 5.6), layout="constrained")
        grid = fig.add_gridspec(2, len(predictions), height_ratios=(3, 1))
        for col, (name, pred) in enumerate(predictions.items()):
            ax = fig.add_subplot(grid[0, col])
            ReliabilityDisplay.from_predictions(y_test, pred, n_bins=10, name=name, ax=ax,
                                                hist_ax=fig.add_subplot(grid[1, col], sharex=ax))
        with staged_directory(out) as stage:
            fig.savefig(stage / "reliability.png", dpi=100)
            report.to_html(stage / "report.html")
            save_json(stage / "metrics.json", results)
        print(f"\nwrote {out}/reliability.png, report.html and metrics.json")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("MCDROP_FAST") == "1",
                        help="a few epochs and passes: a smoke test")
    parser.add_argument("--out", type=Path, default=Path("out/calibration_digits"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run(fast=args.fast, seed=args.seed, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
