"""What the Keras self-check costs (a script, not a test).

    .venv/bin/python benchmarks/keras_compat.py [--repeat 5]

:func:`mcdrop.engine._keras_compat.check` runs its class-level probes once per process, when the first
engine is built, and looks up a few attributes of each model after that. Each figure is the median over
``--repeat`` fresh processes (the once-per-process part runs only in a fresh one), against a baseline
measured in the same process: the rest of building that first engine and running its first
``predict`` (a small dropout MLP, 20 passes over 256 rows). Ratios, not seconds, carry over to
another machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_ONE_PROCESS = r"""
import json, time
import keras, numpy as np
import mcdrop
from mcdrop.engine import _keras_compat as compat

L = keras.layers
model = keras.Sequential([keras.Input((32,)), L.Dense(64, activation="relu"), L.Dropout(0.5),
                          L.Dense(10, activation="softmax")], name="bench")
x = np.random.default_rng(0).standard_normal((256, 32)).astype("float32")
start = time.perf_counter()
compat.check()
checked = time.perf_counter()
mcdrop.MCDropout(model, num_samples=20, seed=0, verbose=0).predict(x)  # its own check is now per model only
first = time.perf_counter()
for _ in range(100):
    compat.check(model)
later = (time.perf_counter() - first) / 100
print(json.dumps({"check": checked - start, "first_engine": first - checked, "per_model": later}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                                        if p), "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = []
    for _ in range(args.repeat):
        out = subprocess.run([sys.executable, "-c", _ONE_PROCESS], capture_output=True, text=True, env=env,
                             check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    check = statistics.median(r["check"] for r in runs)
    engine = statistics.median(r["first_engine"] for r in runs)
    per_model = statistics.median(r["per_model"] for r in runs)
    print(f"{platform.processor() or platform.machine()}, {args.repeat} fresh processes (medians)")
    print(f"  first check (once per process)      {check:8.3f} s   {check / engine:5.2f} x the first engine + predict")
    print(f"  first engine built + first predict  {engine:8.3f} s")
    print(f"  check of a model after that         {per_model * 1e6:8.0f} us  {per_model / engine:9.6f} x")


if __name__ == "__main__":
    main()
