"""Benchmark the acquisition functions: time and peak memory.

    python benchmarks/acquisition.py            # BALD over 100,000 x T=50 x 10, BatchBALD 10 from 5,000
    python benchmarks/acquisition.py --quick    # smaller sizes

Peak memory is the peak of numpy/Python allocations traced by ``tracemalloc`` during the call,
beyond what existed before it (the input samples are reported separately). Timings are the best
of ``--repeat`` runs, wall clock, on whatever CPU this runs on.
"""

from __future__ import annotations

import argparse
import platform
import time
import tracemalloc

import numpy as np

from mcdrop import acquisition as acq


def synthetic_samples(n: int, t: int, c: int, seed: int = 0) -> np.ndarray:
    """float32 per-pass softmax outputs (T, N, C): a per-point logit plus per-pass dropout-like
    noise whose scale varies across points (some certain, some not). Built in row chunks."""
    rng = np.random.default_rng(seed)
    out = np.empty((t, n, c), dtype=np.float32)
    for start in range(0, n, 10_000):
        stop = min(n, start + 10_000)
        base = rng.normal(scale=3.0, size=(stop - start, c))
        scale = rng.uniform(0.1, 3.0, size=(stop - start, 1))
        logits = base[None] + scale[None] * rng.normal(size=(t, stop - start, c))
        logits -= logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        out[:, start:stop] = p / p.sum(axis=-1, keepdims=True)
    return out


def measure(fn, repeat: int):
    best, peak, result = np.inf, 0, None
    for _ in range(repeat):
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
        peak = max(peak, tracemalloc.get_traced_memory()[1] - base)
        tracemalloc.stop()
        best = min(best, elapsed)
    return best, peak, result


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:8.1f} MiB"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    n_big, n_bb = (20_000, 1_000) if args.quick else (100_000, 5_000)
    t, c = 50, 10
    print(f"mcdrop acquisition benchmark — numpy {np.__version__}, {platform.processor() or platform.machine()}")

    samples = synthetic_samples(n_big, t, c)
    print(f"\npool samples: {samples.shape} float32 = {mib(samples.nbytes).strip()}")
    print(f"{'function':<44}{'time':>10}{'peak extra':>16}")
    for name in ("bald", "max_entropy", "variation_ratio", "mean_std", "margin", "least_confidence"):
        fn = acq.SCORES[name]
        secs, peak, _ = measure(lambda fn=fn: fn(samples), args.repeat)
        print(f"{name + f' ({n_big:,} x T={t} x C={c})':<44}{secs:9.3f}s{mib(peak):>16}")
    scores = acq.bald(samples)
    secs, peak, _ = measure(lambda: acq.top_k(scores, 10), args.repeat)
    print(f"{'top_k(bald, 10)':<44}{secs:9.3f}s{mib(peak):>16}")
    for mode in acq.STOCHASTIC_MODES:
        secs, peak, _ = measure(lambda mode=mode: acq.stochastic_batch(scores, 10, mode=mode, seed=0), args.repeat)
        print(f"{'stochastic_batch ' + mode:<44}{secs:9.3f}s{mib(peak):>16}")
    del samples

    pool = synthetic_samples(n_bb, t, c, seed=1)
    print(f"\nBatchBALD pool: {pool.shape} float32 = {mib(pool.nbytes).strip()}, picking 10")
    print(f"{'setting':<44}{'time':>10}{'peak extra':>16}  joint MI (exact)")
    for m in (1024, 4096):
        secs, peak, idx = measure(lambda m=m: acq.batch_bald(pool, 10, num_configurations=m, seed=0),
                                  max(1, args.repeat - 2))
        label = f"num_configurations={m}" + (" (default)" if m == 4096 else "")
        print(f"{label:<44}{secs:9.3f}s{mib(peak):>16}  {acq.joint_mutual_information(pool, idx[:5]):.3f} "
              f"(first 5)")
    secs, peak, idx = measure(lambda: acq.batch_bald(pool, 10, max_memory=2**25, seed=0), 1)
    print(f"{'max_memory=32 MiB':<44}{secs:9.3f}s{mib(peak):>16}")
    top = acq.top_k(acq.bald(pool), 10)
    print(f"top-10 BALD for comparison: joint MI of first 5 = {acq.joint_mutual_information(pool, top[:5]):.3f}")


if __name__ == "__main__":
    main()
