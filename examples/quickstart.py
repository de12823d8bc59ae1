"""Quickstart: MC dropout on scikit-learn's bundled digits.

Trains a small dropout network, predicts the test split with T stochastic passes, and compares:
accuracy of the MC mean against the deterministic network, and the mean predictive entropy of
correct against wrong predictions (uncertainty should flag the errors).

Run: ``.venv/bin/python examples/quickstart.py`` (``--fast`` for a quick check).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import mcdrop  # noqa: E402


def build_model(num_classes: int = 10) -> keras.Model:
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(num_classes, activation="softmax"),
    ])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="few epochs and passes (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.3, random_state=args.seed, stratify=digits.target)

    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=3 if args.fast else 40, batch_size=64, verbose=0)

    deterministic = model.predict(x_test, verbose=0)
    mc = mcdrop.MCDropout(model, num_samples=10 if args.fast else 100, seed=args.seed)
    pred = mc.predict(x_test)

    det_acc = float(np.mean(deterministic.argmax(axis=1) == y_test))
    mc_acc = float(np.mean(pred.predicted_class == y_test))
    correct = pred.predicted_class == y_test
    results = {
        "deterministic_accuracy": det_acc,
        "mc_accuracy": mc_acc,
        "entropy_correct": float(pred.entropy[correct].mean()),
        "entropy_wrong": float(pred.entropy[~correct].mean()) if (~correct).any() else float("nan"),
        "mutual_information_correct": float(pred.mutual_information[correct].mean()),
        "mutual_information_wrong": float(pred.mutual_information[~correct].mean()) if (~correct).any()
        else float("nan"),
        "num_test": int(len(y_test)),
        "num_wrong": int((~correct).sum()),
    }
    print(f"digits test split: {results['num_test']} images, T = {pred.num_samples} passes")
    print(f"  accuracy, deterministic network : {det_acc:.4f}")
    print(f"  accuracy, MC-dropout mean        : {mc_acc:.4f}")
    print(f"  mean predictive entropy, correct : {results['entropy_correct']:.4f} nats")
    print(f"  mean predictive entropy, wrong   : {results['entropy_wrong']:.4f} nats "
          f"({results['num_wrong']} wrong)")
    print(f"  mean mutual information, correct / wrong : {results['mutual_information_correct']:.4f} / "
          f"{results['mutual_information_wrong']:.4f} nats")
    return results


if __name__ == "__main__":
    main()
