"""What the store's durability costs: writing a prediction store block by block as
:class:`mcdrop.store.PredictionWriter` does (rows flushed to the disk with ``fsync`` and then recorded in
``meta.json``, atomically, at most every ``SYNC_SECONDS`` and at the end, all through :mod:`mcdrop.io`)
against the same writes with ``fsync`` turned off, measured in the same run on the same disk, as a ratio.

Measured on a shared 2-CPU Intel Xeon (disk timings are noisy there): 1.5x on the writes alone with a
sync per second, where a sync after every block cost 3.4x to 12x; ``MCDropout.predict(x, out=...)`` of a
small MLP (100,000 rows, T=10) took 1.15x its in-memory time, against 1.05x before any fsync and 2.7x
with a sync per block.

Run: ``.venv/bin/python benchmarks/store_write.py [--rows 200000] [--block 4096] [--folder /tmp]``.
The store is what ``MCDropout.predict(x, out=folder)`` writes; the model's passes are not timed here
(they usually cost far more than the writes), so the ratio is the upper bound of the slowdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

from mcdrop import io, store
from mcdrop.predictive import ClassificationPrediction


def _blocks(rows, block, classes=10, passes=20, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), size=(passes, block))
    one = ClassificationPrediction.from_samples(probs, keep_samples=False)
    return [one] * (rows // block)


def _write(folder, blocks):
    start = time.perf_counter()
    writer = store.PredictionWriter(folder)
    for block in blocks:
        writer.append(block)
    writer.close()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--block", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder", default=None)
    args = parser.parse_args(argv)
    blocks = _blocks(args.rows, args.block)
    synced, unsynced = [], []
    with tempfile.TemporaryDirectory(dir=args.folder) as root:
        for i in range(args.repeats):  # interleaved, so drifts of a shared machine hit both
            synced.append(_write(Path(root) / f"s{i}", blocks))
            with mock.patch.object(io.os, "fsync", lambda fd: None):
                unsynced.append(_write(Path(root) / f"u{i}", blocks))
    s, u = statistics.median(synced), statistics.median(unsynced)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{len(blocks)} blocks of {args.block} rows (10 classes), median of {args.repeats}")
    print(f"with fsync    {s * 1e3:8.1f} ms  ({len(blocks) * args.block / s:,.0f} rows/s)")
    print(f"without fsync {u * 1e3:8.1f} ms  ({len(blocks) * args.block / u:,.0f} rows/s)")
    print(f"ratio (durable / not): {s / u:.2f}")


if __name__ == "__main__":
    main()
