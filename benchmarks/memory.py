"""Memory benchmark: peak RSS growth of ``MCDropout.predict`` at huge T on one row.

Run: ``.venv/bin/python benchmarks/memory.py`` (or ``make bench``).

The passes are generated chunk by chunk and each chunk's outputs go straight into the accumulators, so
memory must not grow with T: the target is a peak RSS growth below 64 MiB for T = 5,000,000 passes of a
classifier on one row (the list of pass indices alone would take 40 MB, the outputs of all passes 60 MB
in float32 and 120 MB in float64). The growth is measured from the resident set after a warm-up
prediction (same model, same shapes, so TensorFlow's traces and buffers already exist), with the
kernel's high-water mark reset before each run (``/proc/self/clear_refs``, Linux), and reported beside
the growth at a baseline T = 50,000 measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import mcdrop  # noqa: E402

MIB = 2**20
TARGET_MIB = 64


def _status(field: str) -> int:
    """A /proc/self/status memory field, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_growth(run) -> tuple[float, float]:
    """(peak RSS growth in bytes, seconds) of ``run()``."""
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM) to the current one
    start = time.perf_counter()
    run()
    return _status("VmHWM") - before, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-T", type=int, default=5_000_000, help="passes of the measured run (default 5,000,000)")
    parser.add_argument("--baseline", type=int, default=50_000, help="passes of the baseline run")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dropout(0.5), keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).standard_normal((1, 8)).astype("float32")

    def predict(t):
        return lambda: mcdrop.MCDropout(model, num_samples=t, seed=0, verbose=0).predict(x)

    predict(args.baseline)()  # warm-up: traces, thread pools, allocator arenas
    base, base_s = peak_growth(predict(args.baseline))
    big, big_s = peak_growth(predict(args.T))
    print(f"peak RSS growth, one row, classifier (8-32-3), passes per call "
          f"{mcdrop.MCDropout(model, num_samples=args.T, verbose=0).plan(1)[1]}:")
    print(f"  T = {args.baseline:>11,}: {base / MIB:7.1f} MiB  ({base_s:6.1f} s)")
    print(f"  T = {args.T:>11,}: {big / MIB:7.1f} MiB  ({big_s:6.1f} s)   target < {TARGET_MIB} MiB: "
          f"{'met' if big < TARGET_MIB * MIB else 'MISSED'}")
    print(f"  growth ratio (T = {args.T:,} over T = {args.baseline:,}): {big / max(base, MIB):.2f} "
          f"(for {args.T / args.baseline:,.0f}x the passes)")


if __name__ == "__main__":
    main()
