"""Scaling benchmark: throughput against pool size and Ray workers, and memory in streaming mode.

Run: ``.venv/bin/python benchmarks/scale.py`` (``--quick`` for smaller pools; ``--skip-ray``
without Ray). Needs ``psutil``; the Ray part needs ``pip install "mcdrop[ray]"``.

(a) throughput in rows/s (T = 50, an MLP 64-256-256-10) of the single-process engine and of
    ``mcdrop.distributed.score_pool`` with 1..W Ray workers on a local cluster, for several pool
    sizes. Ray figures are wall time of the whole call, actor start-up (TensorFlow import, model
    load) included; they show where Ray starts to pay on this machine.
(b) peak resident memory (psutil RSS, sampled every 5 ms in a thread) of one process scoring a
    pool streamed from a generator to disk, ``MCDropout.predict(generator, out=folder)``, at T=10
    and at T=200 on the same pool; target: less than 10% growth. Each T runs in a fresh process
    so the peaks do not carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402

T = 50
FEATURES = 64


def build_model(path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(256, activation="relu"), keras.layers.Dropout(0.5),
        keras.layers.Dense(256, activation="relu"), keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.save(path)
    return model


def pool(rows, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, FEATURES)).astype("float32")


# --------------------------------------------------------------------------- (a) throughput


def throughput(sizes, workers, folder, skip_ray):
    import mcdrop
    from mcdrop.io import load_model

    model_path = Path(folder) / "mlp.keras"
    build_model(model_path)
    engine = mcdrop.MCDropout(load_model(model_path), num_samples=T, seed=0, verbose=0)
    engine.predict(pool(256))  # trace once
    print(f"\n(a) throughput, rows/s (T={T}, MLP 64-256-256-10, {os.cpu_count()} CPUs)")
    header = f"  {'pool rows':>10}  {'1 process':>10}" + "".join(f"  {f'ray x{w}':>10}" for w in workers)
    print(header)
    results = {}
    ray = None
    if not skip_ray:
        try:
            import ray
        except ImportError:
            print('  (Ray not installed: pip install "mcdrop[ray]"; Ray columns skipped)')
            ray = None
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
    try:
        for n in sizes:
            x = pool(n)
            start = time.perf_counter()
            reference = engine.predict(x)
            single = n / (time.perf_counter() - start)
            row = {"single": single}
            line = f"  {n:>10,}  {single:>10,.0f}"
            if ray is not None:
                from mcdrop.distributed import score_pool

                for w in workers:
                    start = time.perf_counter()
                    got = score_pool(model_path, x, num_samples=T, seed=0, num_workers=w,
                                     num_cpus=max(0.25, os.cpu_count() / w))
                    rate = n / (time.perf_counter() - start)
                    same = np.array_equal(got["mean"], reference.mean)
                    row[f"ray{w}"] = rate
                    line += f"  {rate:>10,.0f}" + ("" if same else "!")
            results[n] = row
            print(line, flush=True)
        if ray is not None:
            print("  ('!' would mark a Ray result that differs from the single process: none should)")
    finally:
        if ray is not None:
            ray.shutdown()
    return results


# --------------------------------------------------------------------------- (b) memory


def _memory_child(num_samples, rows, batch, folder, passes_per_chunk=None):
    """Runs in a fresh process: peak RSS while streaming ``rows`` rows to disk at T=num_samples."""
    import psutil

    import mcdrop

    model = build_model(Path(folder) / f"mem{num_samples}.keras")
    process = psutil.Process()
    mc = mcdrop.MCDropout(model, num_samples=num_samples, seed=0, verbose=0, passes_per_chunk=passes_per_chunk)
    tag = f"{num_samples}-{passes_per_chunk}"
    mc.predict(pool(batch), out=Path(folder) / f"warm{tag}")  # trace and import everything once

    def generator():
        for start in range(0, rows, batch):
            yield pool(min(batch, rows - start), seed=start)

    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    pred = mc.predict(generator(), out=Path(folder) / f"store{tag}")
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    print(json.dumps({"T": num_samples, "rows": len(pred), "baseline": baseline, "peak": peak[0],
                      "seconds": seconds}))


def memory(rows, batch, folder):
    print(f"\n(b) peak RSS streaming {rows:,} rows from a generator (batches of {batch}) to disk, "
          "MLP 64-256-256-10")
    runs = [(10, None, "T=10,  default plan"), (200, None, "T=200, default plan"),
            (200, 10, "T=200, passes_per_chunk=10")]
    figures = {}
    for t, ppc, label in runs:
        command = [sys.executable, __file__, "--memory-child", str(t), "--rows", str(rows),
                   "--batch", str(batch), "--folder", str(folder)]
        if ppc:
            command += ["--passes-per-chunk", str(ppc)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        f = figures[label] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {label:<27} peak RSS {f['peak'] / 2**20:7.1f} MiB   (before the call {f['baseline'] / 2**20:7.1f}"
              f" MiB, growth during it {(f['peak'] - f['baseline']) / 2**20:5.1f} MiB)  {f['seconds']:6.1f} s",
              flush=True)
    base = figures[runs[0][2]]["peak"]
    for _, _, label in runs[1:]:
        growth = figures[label]["peak"] / base - 1
        print(f"  peak RSS growth, {label} vs T=10: {growth * 100:+6.1f}%   (target < 10%)  "
              f"{'OK' if growth < 0.10 else 'MISSED'}")
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller pools (about a minute)")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=None)
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--passes-per-chunk", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        _memory_child(args.memory_child, args.rows, args.batch, args.folder, args.passes_per_chunk)
        return
    import keras
    import tensorflow as tf

    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, CPUs: {os.cpu_count()}")
    sizes = [2_000, 20_000] if args.quick else [2_000, 20_000, 100_000]
    workers = args.workers or sorted({1, min(2, os.cpu_count()), os.cpu_count()})
    rows = args.rows or (20_000 if args.quick else 100_000)
    with tempfile.TemporaryDirectory() as folder:
        throughput(sizes, workers, folder, args.skip_ray)
        memory(rows, args.batch, folder)


if __name__ == "__main__":
    main()
