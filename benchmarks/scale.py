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
(c) ``--ray``: a pool of any size on Ray with ``mcdrop.distributed.stream_pool`` (the workers
    write the rows, the driver keeps per-group records and O(k) selections):
    * the driver's peak RSS (psutil, the driver process only, sampled every 5 ms) scoring a
      ``.npy`` pool of 200,000 and of 2,000,000 rows into a job folder with a global top-100 by
      BALD, each size in a fresh driver process; target: growth under 10%;
    * rows/s of the whole job with 1 and 2 workers against the single-process engine on the same
      pool (same model, T and plan; the job's result is checked bit for bit against it);
    * a resumed job's time against the full run when half the groups were done (the done records
      of the second half removed from a finished job, which a resume then scores again).
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

    pred, baseline, peak, seconds = _peak_rss(
        process, lambda: mc.predict(generator(), out=Path(folder) / f"store{tag}"))
    print(json.dumps({"T": num_samples, "rows": len(pred), "baseline": baseline, "peak": peak,
                      "seconds": seconds}))


def _peak_rss(process, call):
    """(call's result, RSS before, peak RSS during it, seconds): RSS sampled every 5 ms in a thread."""
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
    result = call()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return result, baseline, max(peak[0], process.memory_info().rss), seconds


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


# --------------------------------------------------------------------------- (c) Ray streaming jobs

SMALL = 16  # features of the pool of part (c)'s memory runs (a smaller file to write for 2M rows)


def build_small(path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SMALL,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.save(path)


def _write_pool(path, rows, features):
    """A .npy pool written in slices (never whole in memory)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype="float32", shape=(rows, features))
    for start in range(0, rows, 100_000):
        stop = min(start + 100_000, rows)
        array[start:stop] = pool(stop - start, seed=start)[:, :features]
    array.flush()
    del array


def _ray_memory_child(rows, folder):
    """Runs in a fresh driver process: its peak RSS while a Ray job scores ``rows`` rows."""
    import psutil
    import ray

    from mcdrop import distributed

    folder = Path(folder)
    model, data = folder / "small.keras", folder / f"pool{rows}.npy"
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    process = psutil.Process()
    # the same job on a few rows first: imports, the model on the driver, Ray Data's first job
    distributed.stream_pool(model, folder / "pool2000.npy", folder / f"warm{rows}", num_samples=10, seed=0,
                            select={"bald": 100})
    job, baseline, peak, seconds = _peak_rss(process, lambda: distributed.stream_pool(
        model, data, folder / f"job{rows}", num_samples=10, seed=0, select={"bald": 100}))
    ray.shutdown()
    print(json.dumps({"rows": job.num_rows, "baseline": baseline, "peak": peak, "seconds": seconds}))


def ray_streaming(folder, rows_list, rate_rows):
    import shutil

    import ray

    import mcdrop
    from mcdrop import distributed, store
    from mcdrop.io import load_model

    folder = Path(folder)
    print(f"\n(c) Ray streaming jobs (mcdrop.distributed.stream_pool), {os.cpu_count()} CPUs")
    build_small(folder / "small.keras")
    for rows in sorted({2000, *rows_list}):
        _write_pool(folder / f"pool{rows}.npy", rows, SMALL)
    figures = {"memory": {}}
    for rows in rows_list:
        command = [sys.executable, __file__, "--ray-memory-child", str(rows), "--folder", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        f = figures["memory"][rows] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  driver, {rows:>9,} rows (T=10, MLP 16-64-10): peak RSS {f['peak'] / 2**20:7.1f} MiB "
              f"(before the job {f['baseline'] / 2**20:7.1f} MiB)  {f['seconds']:6.1f} s  "
              f"{rows / f['seconds']:8,.0f} rows/s", flush=True)
        shutil.rmtree(folder / f"job{rows}")
    small, large = (figures["memory"][r]["peak"] for r in (min(rows_list), max(rows_list)))
    growth = large / small - 1
    print(f"  driver peak RSS growth, {max(rows_list):,} vs {min(rows_list):,} rows: {growth * 100:+6.1f}%   "
          f"(target < 10%)  {'OK' if growth < 0.10 else 'MISSED'}")

    model_path = folder / "mlp.keras"
    build_model(model_path)
    _write_pool(folder / "rate.npy", rate_rows, FEATURES)
    x = np.load(folder / "rate.npy")
    engine = mcdrop.MCDropout(load_model(model_path), num_samples=T, seed=0, verbose=0)
    engine.predict(x[:256])
    start = time.perf_counter()
    reference = engine.predict(x)
    single = rate_rows / (time.perf_counter() - start)
    print(f"  rows/s, {rate_rows:,} rows (T={T}, MLP 64-256-256-10): 1 process {single:8,.0f}", end="", flush=True)
    figures["rate"] = {"single": single}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        for workers in (1, 2):
            out = folder / f"rate{workers}"
            start = time.perf_counter()
            job = distributed.stream_pool(model_path, folder / "rate.npy", out, num_samples=T, seed=0,
                                          num_workers=workers, num_cpus=os.cpu_count() / workers)
            seconds = time.perf_counter() - start
            same = np.array_equal(job.load().mean, reference.mean)
            figures["rate"][workers] = rate_rows / seconds
            print(f"   ray x{workers} {rate_rows / seconds:8,.0f}{'' if same else ' (DIFFERS!)'}", end="", flush=True)
        print()
        # resume: remove the records of the second half of a finished job's groups, then resume it
        out = folder / "rate2"
        full = rate_rows / figures["rate"][2]
        groups = sorted(store.done_groups(out))
        for group in groups[len(groups) // 2:]:
            (out / "done" / f"g{group:08d}.npz").unlink()
        start = time.perf_counter()
        job = distributed.stream_pool(model_path, folder / "rate.npy", out, num_samples=T, seed=0,
                                      num_workers=2, num_cpus=os.cpu_count() / 2, resume=True)
        resumed = time.perf_counter() - start
        same = np.array_equal(job.load().mean, reference.mean)
        figures["resume"] = {"full": full, "resumed": resumed, "groups_run": job.groups_run,
                             "groups_skipped": job.groups_skipped}
        print(f"  resume with {job.groups_skipped} of {len(groups)} groups done: {resumed:6.1f} s against "
              f"{full:6.1f} s for the full run ({resumed / full:.2f}x){'' if same else ' (DIFFERS!)'}")
    finally:
        ray.shutdown()
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller pools (about a minute)")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=None)
    parser.add_argument("--ray", action="store_true",
                        help="only part (c): Ray streaming jobs (driver memory, rows/s, resume)")
    parser.add_argument("--ray-rows", type=int, nargs="+", default=[200_000, 2_000_000],
                        help="pool sizes of (c)'s driver-memory runs (default: 200000 2000000)")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ray-memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--passes-per-chunk", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        _memory_child(args.memory_child, args.rows, args.batch, args.folder, args.passes_per_chunk)
        return
    if args.ray_memory_child is not None:
        _ray_memory_child(args.ray_memory_child, args.folder)
        return
    import keras
    import tensorflow as tf

    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, CPUs: {os.cpu_count()}")
    sizes = [2_000, 20_000] if args.quick else [2_000, 20_000, 100_000]
    workers = args.workers or sorted({1, min(2, os.cpu_count()), os.cpu_count()})
    rows = args.rows or (20_000 if args.quick else 100_000)
    if args.ray:
        with tempfile.TemporaryDirectory() as folder:
            ray_streaming(folder, args.ray_rows, 20_000 if args.quick else 100_000)
        return
    with tempfile.TemporaryDirectory() as folder:
        throughput(sizes, workers, folder, args.skip_ray)
        memory(rows, args.batch, folder)


if __name__ == "__main__":
    main()
