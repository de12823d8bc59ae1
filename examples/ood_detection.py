"""Out-of-distribution detection on scikit-learn's digits: which uncertainty flags inputs the model
was never trained for?

A dropout CNN learns digits 0–5 only. Three kinds of inputs it has not seen are then scored:

* ``unseen digits`` — real digits 6–9 (semantic shift: a new class, same style),
* ``inverted`` — test digits 0–5 with ink and paper swapped (covariate shift),
* ``noise`` — images of uniform random pixels.

Each input gets five uncertainty scores: one minus the deterministic network's top probability
and its predictive entropy; and from MC dropout (Gal & Ghahramani 2016) the predictive entropy, the
mutual information between label and weights (the epistemic part, BALD) and the variation ratio.
The script prints the AUROC of every score against every kind of shift (in-distribution test
digits are the negatives), writes histograms (``ood.png``) and the numbers (``metrics.json``) to
``--out``.

Usage::

    python examples/ood_detection.py                       # about half a minute on 2 CPU cores
    python examples/ood_detection.py --fast                # a few seconds (also MCDROP_FAST=1)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

IN_CLASSES = tuple(range(6))
SCORES = {
    "deterministic 1 - max prob": ("det", "least_confidence"),
    "deterministic entropy": ("det", "entropy"),
    "MC entropy": ("mc", "entropy"),
    "MC mutual information": ("mc", "mutual_information"),
    "MC variation ratio": ("mc", "variation_ratio"),
}


def settings(fast: bool) -> dict:
    if fast:
        return dict(epochs=5, num_samples=10)
    return dict(epochs=100, num_samples=50)


def load_sets(seed: int):
    """Training digits 0–5, their test split, and the three out-of-distribution sets (images in [0, 1])."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target
    inside = np.isin(labels, IN_CLASSES)
    x_train, x_test, y_train, y_test = train_test_split(images[inside], labels[inside], train_size=0.6,
                                                        stratify=labels[inside], random_state=seed)
    rng = np.random.default_rng(seed)
    ood = {
        "unseen digits": images[~inside],
        "inverted": 1.0 - x_test,
        "noise": rng.random((len(x_test), 8, 8, 1)).astype(np.float32),
    }
    return x_train, y_train, x_test, y_test, ood


def build_model(num_classes: int):
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _score(pred, statistic: str) -> np.ndarray:
    if statistic == "least_confidence":
        return 1.0 - pred.confidence
    return getattr(pred, statistic)


def run(*, fast: bool = False, seed: int = 0, out: Path | None = None) -> dict:
    import keras

    import mcdrop
    from mcdrop import metrics
    from mcdrop.io import save_json, staged_directory
    from mcdrop.predictive import ClassificationPrediction

    cfg = settings(fast)
    x_train, y_train, x_test, y_test, ood = load_sets(seed)
    keras.utils.set_random_seed(seed)
    model = build_model(len(IN_CLASSES))
    model.fit(x_train, y_train, epochs=cfg["epochs"], batch_size=32, verbose=0)
    mc = mcdrop.MCDropout(model, num_samples=cfg["num_samples"], seed=seed, verbose=0)

    sets = {"in-distribution": x_test, **ood}
    preds = {
        name: {"det": ClassificationPrediction.from_samples(model.predict(x, verbose=0)[None]), "mc": mc.predict(x)}
        for name, x in sets.items()
    }
    accuracy = metrics.accuracy_score(y_test, preds["in-distribution"]["mc"])
    print(f"trained on digits 0-5; MC dropout test accuracy {accuracy:.4f} ({len(x_test)} test digits)\n")

    auroc = {
        score: {shift: metrics.ood_auroc(_score(preds["in-distribution"][kind], stat), _score(preds[shift][kind], stat))
                for shift in ood}
        for score, (kind, stat) in SCORES.items()
    }
    header = f"{'AUROC (out = positive)':<28}" + "".join(f"{shift:>15}" for shift in ood)
    print(header)
    print("-" * len(header))
    for score, row in auroc.items():
        print(f"{score:<28}" + "".join(f"{row[shift]:>15.4f}" for shift in ood))

    results = {"seed": seed, "fast": fast, "in_distribution_accuracy": accuracy, "auroc": auroc,
               "sizes": {name: int(len(x)) for name, x in sets.items()}}
    if out is not None:
        fig = _figure(preds, list(ood))
        with staged_directory(out) as stage:
            fig.savefig(stage / "ood.png", dpi=100)
            save_json(stage / "metrics.json", results)
        print(f"\nwrote {out}/ood.png and metrics.json")
    return results


def _figure(preds, shifts):
    from matplotlib.figure import Figure

    from mcdrop.plotting import UncertaintyDisplay

    fig = Figure(figsize=(5 * len(shifts), 7.5), layout="constrained")
    axes = fig.subplots(2, len(shifts))
    for col, shift in enumerate(shifts):
        for row, (kind, measure, label) in enumerate([("mc", "entropy", "MC entropy"),
                                                      ("mc", "mutual_information", "MC mutual information")]):
            UncertaintyDisplay.from_ood(preds["in-distribution"][kind], preds[shift][kind], measure=measure,
                                        name=f"{shift}, {label}", ax=axes[row, col])
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("MCDROP_FAST") == "1",
                        help="a few epochs and passes: a smoke test")
    parser.add_argument("--out", type=Path, default=Path("out/ood_detection"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run(fast=args.fast, seed=args.seed, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
