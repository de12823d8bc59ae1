"""Active learning on scikit-learn's digits: random vs max-entropy vs BALD vs BatchBALD.

A small dropout network is retrained from scratch after every acquired batch (as in Gal et
al. 2017); the pool is scored with MC dropout through :class:`mcdrop.active.ActiveLearningLoop`.
Several seeds per method; the script plots accuracy against the number of labels (mean and
the min-max range over seeds), writes the numbers to JSON, and prints for each method the
labels needed to reach a target test accuracy.

Usage::

    python examples/active_learning_digits.py                # full run (several minutes on 2 CPU cores)
    python examples/active_learning_digits.py --fast         # seconds: a smoke test (also MCDROP_FAST=1)
    python examples/active_learning_digits.py --out DIR --seeds 0 1 2 --target 0.9

Runs are resumable: each (method, seed) keeps its loop state under ``DIR/state``; run the
same command again after an interruption and finished rounds are not redone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

METHODS = ("random", "max_entropy", "bald", "batch_bald")
LABELS = {"random": "random", "max_entropy": "max entropy", "bald": "BALD (top-k)", "batch_bald": "BatchBALD"}


def settings(fast: bool) -> dict:
    if fast:
        return dict(seeds=[0], initial_per_class=2, batch_size=10, budget=10, num_samples=4, steps=40,
                    pool_size=200, test_size=100, candidates=40, target=0.5)
    return dict(seeds=[0, 1, 2], initial_per_class=2, batch_size=10, budget=180, num_samples=20, steps=500,
                pool_size=None, test_size=500, candidates=300, target=0.90)


def load_split(seed: int, test_size: int, pool_size: int | None):
    """Digits scaled to [0, 1]; a stratified test set and the rest as pool (same split for every run)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_pool, x_test, y_pool, y_test = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    if pool_size is not None:
        x_pool, y_pool = x_pool[:pool_size], y_pool[:pool_size]
    return x_pool, y_pool, x_test, y_test


def balanced_initial(y_pool: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y_pool == c), size=per_class, replace=False) for c in np.unique(y_pool)]
    return np.sort(np.concatenate(picks))


def make_trainer(steps: int, batch: int = 32):
    """Build and train a fresh MLP with dropout for a fixed number of gradient steps."""
    import keras

    def build_and_train(x, y, *, seed):
        model = keras.Sequential([
            keras.Input((x.shape[1],)),
            keras.layers.Dense(128, activation="relu", kernel_regularizer=keras.regularizers.l2(1e-4)),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(128, activation="relu", kernel_regularizer=keras.regularizers.l2(1e-4)),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10, activation="softmax"),
        ])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        # the same number of steps whatever the labelled-set size: reshuffled copies of it, one epoch
        rng = np.random.default_rng(seed)
        reps = math.ceil(steps * batch / len(x))
        order = np.concatenate([rng.permutation(len(x)) for _ in range(reps)])[: steps * batch]
        model.fit(x[order], y[order], batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return model

    return build_and_train


def labels_to_target(history: list[dict], target: float):
    """The first label count at which test accuracy reached ``target`` (None if never)."""
    for entry in history:
        if entry["accuracy"] >= target:
            return entry["num_labels"]
    return None


def run(out: Path, fast: bool, seeds=None, target=None, methods=METHODS) -> dict:
    from mcdrop.active import ActiveLearningLoop

    cfg = settings(fast)
    seeds = cfg["seeds"] if seeds is None else list(seeds)
    target = cfg["target"] if target is None else target
    x_pool, y_pool, x_test, y_test = load_split(0, cfg["test_size"], cfg["pool_size"])
    trainer = make_trainer(cfg["steps"])
    results = {"settings": {**cfg, "seeds": seeds, "target": target, "pool": int(len(x_pool)),
                            "test": int(len(x_test))}, "runs": {}}
    for method in methods:
        for seed in seeds:
            start = time.perf_counter()
            loop = ActiveLearningLoop(
                trainer, x_pool, y_pool, initial=balanced_initial(y_pool, cfg["initial_per_class"], seed),
                method=method, batch_size=cfg["batch_size"], budget=cfg["budget"], x_test=x_test, y_test=y_test,
                num_samples=cfg["num_samples"], candidates=cfg["candidates"],
                state_dir=out / "state" / f"{method}-seed{seed}", seed=seed,
            )
            history = loop.run()
            results["runs"][f"{method}/{seed}"] = [entry.to_dict() for entry in history]  # Round -> JSON
            print(f"{LABELS[method]:>14} seed {seed}: final accuracy {history[-1]['accuracy']:.3f} "
                  f"with {history[-1]['num_labels']} labels ({time.perf_counter() - start:.0f} s)", flush=True)
    results["summary"] = summarise(results, methods, seeds, target)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, methods, seeds, out / "active_learning_digits.png")
    return results


def summarise(results: dict, methods, seeds, target: float) -> dict:
    summary = {}
    print(f"\nlabels needed to reach {target:.0%} test accuracy (per seed; mean curve):")
    for method in methods:
        histories = [results["runs"][f"{method}/{seed}"] for seed in seeds]
        counts = [h["num_labels"] for h in histories[0]]
        acc = np.array([[h["accuracy"] for h in hist] for hist in histories])
        per_seed = [labels_to_target(hist, target) for hist in histories]
        mean_curve = [{"num_labels": n, "accuracy": float(a)} for n, a in zip(counts, acc.mean(axis=0))]
        summary[method] = {
            "labels_to_target_per_seed": per_seed,
            "labels_to_target_mean_curve": labels_to_target(mean_curve, target),
            "num_labels": counts,
            "accuracy_mean": acc.mean(axis=0).round(4).tolist(),
            "accuracy_min": acc.min(axis=0).round(4).tolist(),
            "accuracy_max": acc.max(axis=0).round(4).tolist(),
            "final_nll_mean": float(np.mean([h[-1]["nll"] for h in histories])),
            "final_ece_mean": float(np.mean([h[-1]["ece"] for h in histories])),
        }
        shown = ", ".join("not reached" if c is None else str(c) for c in per_seed)
        mean_hit = summary[method]["labels_to_target_mean_curve"]
        print(f"  {LABELS[method]:>14}: {shown}; mean curve: {'not reached' if mean_hit is None else mean_hit}"
              f" (final accuracy {acc[:, -1].mean():.3f})")
    return summary


def plot(results: dict, methods, seeds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = results["settings"]["target"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in methods:
        s = results["summary"][method]
        n = np.array(s["num_labels"])
        ax.plot(n, s["accuracy_mean"], marker="o", markersize=3, label=LABELS[method])
        ax.fill_between(n, s["accuracy_min"], s["accuracy_max"], alpha=0.2)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("number of labelled examples")
    ax.set_ylabel("test accuracy (MC dropout mean)")
    ax.set_title(f"Active learning on digits: mean and min-max over {len(seeds)} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("MCDROP_FAST") == "1",
                        help="a tiny run for smoke tests (also MCDROP_FAST=1)")
    parser.add_argument("--out", type=Path, default=Path("out/active_learning_digits"))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--target", type=float, default=None, help="target test accuracy")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run(args.out, args.fast, seeds=args.seeds, target=args.target, methods=args.methods)
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'active_learning_digits.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
