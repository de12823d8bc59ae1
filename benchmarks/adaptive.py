"""Adaptive T: the cost of ``predict(x, num_samples="auto", tolerance=...)`` against the fixed-T run
it stopped at.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/adaptive.py``. For each tolerance the adaptive run
is made once to learn the T it stops at; then the adaptive run and two fixed-T runs with that T —
the default plan (all passes in one call where they fit) and ``passes_per_chunk`` equal to the
adaptive chunk (the run it equals bit for bit) — take turns (best of several repeats, with
``benchmarks/engine.py``'s interleaved rounds), so the ratios are comparable on a shared machine.

The adaptive run re-reads the input once per chunk of passes and computes the standard error after
each chunk; the ratio to the fixed run with the same chunks is that overhead, and the ratio to the
default plan adds the cost of smaller compiled calls.

Two runs on the project's shared 2-core "Intel(R) Xeon(R) Processor" (load average above 10):

    tolerance     T   auto / fixed (same chunks)   auto / fixed (default plan)
         0.03    60                        1.18x                         1.24x   (best of 5)
         0.02   120                1.60x / 1.93x                 0.91x / 1.72x   (best of 5 / of 3)
         0.01   440                1.21x / 1.53x                 0.50x / 0.53x   (best of 5 / of 3)

The same-chunk ratio moved by 0.3 between runs: the machine's noise is that large. Profiled, the
compiled calls of the two runs take the same time; the rest is per-chunk Python work (reading the
input again, one summary per chunk). At large T the default plan's small row blocks cost more than
the adaptive chunks do.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import mcdrop  # noqa: E402
from mcdrop.engine.adaptive import DEFAULT_CHUNK  # noqa: E402
from engine import interleaved  # noqa: E402


def mlp():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"), keras.layers.Dropout(0.5),
                              keras.layers.Dense(256, activation="relu"), keras.layers.Dropout(0.5),
                              keras.layers.Dense(10, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(2000, 64)).astype("float32")
    return model, x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    model, x = mlp()
    chunk = DEFAULT_CHUNK
    print(f"MLP 64-256-256-10 with dropout, N={len(x)} rows, adaptive chunk {chunk} passes, "
          f"best of {args.repeats}")
    print(f"{'tolerance':>9}  {'T':>4}  {'auto / fixed (same chunks)':>27}  {'auto / fixed (default plan)':>28}")
    for tolerance in (0.03, 0.02, 0.01):
        auto_engine = mcdrop.MCDropout(model, seed=0, verbose=0)
        t = auto_engine.predict(x, num_samples="auto", tolerance=tolerance, max_samples=4000).num_samples
        same = mcdrop.MCDropout(model, num_samples=t, seed=0, passes_per_chunk=chunk, verbose=0)
        default = mcdrop.MCDropout(model, num_samples=t, seed=0, verbose=0)
        best = interleaved({
            "auto": lambda: auto_engine.predict(x, num_samples="auto", tolerance=tolerance, max_samples=4000),
            "same": lambda: same.predict(x),
            "default": lambda: default.predict(x),
        }, args.repeats)
        print(f"{tolerance:>9}  {t:>4}  {best['auto'] / best['same']:>26.2f}x  {best['auto'] / best['default']:>27.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
