"""Engine benchmark: MC dropout against the naive loop, the savvy user's tiled function and the true floor.

Run: ``.venv/bin/python benchmarks/engine.py`` (or ``make bench``). All figures are ratios against
baselines measured in the same run, the candidates taking turns round after round, best of k
(``--repeats``, default 7), so a shared, noisy machine still gives comparable numbers. T = 50.

Workloads (``benchmarks/_workloads.py``): the MLP 64-256-256-10 (N = 1000), the CNN with dropout in
its head (N = 200), an LSTM with dropout and recurrent_dropout (N = 200), a transformer block with
MultiHeadAttention dropout (N = 128). Candidates, per workload:

naive   ``[model(x, training=True) for _ in range(T)]``
tiled   x repeated T times, one compiled ``model(..., training=True)`` call, reshaped to (T, N, ...)
floor   the true floor: the layers before the first stochastic layer once on the N rows, the rest
        deterministically on the T-times-tiled batch, one compiled call (for the LSTM and the
        transformer the noise sits in the first layer, so this is the deterministic tiled pass)
mcdrop  ``MCDropout(model, num_samples=T, seed=0).predict(x)``, default options; also with
        ``batch_size=N`` (one block)

Printed ratios (targets of issue 10): mcdrop / floor (<= 1.15), mcdrop / tiled (< 1: faster than the
tiled function), speed-up over the naive loop (>= 12x MLP, >= 30x CNN). ``--profile`` splits mcdrop's
time on the MLP beyond the floor; ``--json PATH`` writes every figure and the machine (CPU model, load).
"""

from __future__ import annotations

import argparse
import os
import sys
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _workloads import (  # noqa: E402
    T, WORKLOADS, baselines, finish, interleaved, machine, split_passes)

import tensorflow as tf  # noqa: E402

import mcdrop  # noqa: E402
from mcdrop.engine._summarise import ReducedStep  # noqa: E402

__all__ = ["interleaved", "measure", "profile", "main"]

FLOOR_TARGET = 1.15
SPEED_TARGETS = {"mlp": 12, "cnn": 30}


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def measure(workload, repeats: int, passes: int = T) -> dict:
    """Time the four candidates on ``workload`` (interleaved, best of ``repeats``), print and return
    the figures in milliseconds and the ratios."""
    model, x = workload.model, workload.x
    rows = x.shape[0]
    base = baselines(model, x, passes)
    engine = mcdrop.MCDropout(model, num_samples=passes, seed=0, verbose=0)
    block = mcdrop.MCDropout(model, num_samples=passes, seed=0, verbose=0, batch_size=rows)
    times = interleaved({"naive": base["naive"], "tiled": base["tiled"], "floor": base["floor"],
                         "mcdrop": lambda: engine.predict(x), "block": lambda: block.predict(x)}, repeats)
    ms = {name: t * 1e3 for name, t in times.items()}
    over_floor, over_tiled = ms["mcdrop"] / ms["floor"], ms["mcdrop"] / ms["tiled"]
    speedup = ms["naive"] / ms["mcdrop"]
    chunk_rows, chunk_passes = engine.plan(rows)
    floor_kind = "trunk once, rest tiled" if base["hoisted"] else "deterministic tiled pass"

    print(f"\n{workload.name}  (N={rows}, T={passes})")
    print(f"  naive loop                 {ms['naive']:9.1f} ms")
    print(f"  tiled training=True        {ms['tiled']:9.1f} ms")
    print(f"  floor                      {ms['floor']:9.1f} ms   ({floor_kind})")
    print(f"  mcdrop (default)           {ms['mcdrop']:9.1f} ms   {chunk_rows} rows x {chunk_passes} passes per call")
    print(f"  mcdrop (one block)         {ms['block']:9.1f} ms   batch_size={rows}")
    print(f"  mcdrop / floor:            {over_floor:6.2f}x   (target <= {FLOOR_TARGET}x)  "
          f"{_verdict(over_floor <= FLOOR_TARGET)}")
    print(f"  mcdrop / floor, one block: {ms['block'] / ms['floor']:6.2f}x")
    print(f"  mcdrop / tiled:            {over_tiled:6.2f}x   (target < 1: faster than the tiled function)  "
          f"{_verdict(over_tiled < 1)}")
    target = SPEED_TARGETS.get(workload.key)
    line = f"  speed-up over naive loop:  {speedup:6.1f}x"
    if target is not None:
        line += f"   (target >= {target}x)  {_verdict(speedup >= target)}"
    print(line)
    print(f"  floor's speed-up over the naive loop: {ms['naive'] / ms['floor']:.1f}x (no implementation beats it)")
    return {"name": workload.name, "rows": rows, "passes": passes, "floor": floor_kind,
            "chunk": [chunk_rows, chunk_passes],
            "ms": {k: round(v, 3) for k, v in ms.items()},
            "ratios": {"mcdrop_over_floor": over_floor, "block_over_floor": ms["block"] / ms["floor"],
                       "mcdrop_over_tiled": over_tiled, "speedup_over_naive": speedup,
                       "floor_speedup_over_naive": ms["naive"] / ms["floor"]}}


def _reduced_apart(engine, x, rows):
    """``predict(x, batch_size=rows)`` with the reductions as a second compiled call (never fused)."""
    with mock.patch.object(ReducedStep, "_fused", return_value=None):
        return engine.predict(x, batch_size=rows)


def profile(workload, repeats: int, passes: int = T) -> dict:
    """Where mcdrop's time goes beyond the floor.

    floor               the true floor (no masks, no statistics)
    floor + masks       the same split with Keras' own dropout on in the tiled part: masks as
                        Keras draws them (a fresh random number per element and pass), a reference
                        for what a mask implementation costs, not a lower bound (needs a model with
                        no BatchNormalization after the first dropout, as the MLP)
    sample, one block   ``MCDropout.sample(x, batch_size=N)``: the compiled call, the copy to the
                        host, the finiteness check, no statistics
    reductions          the engine's reductions over the passes (``MCDropout._reducer``, one
                        compiled function per head) of a block's (T, N, C) passes already computed
    predict, one block  ``predict(x, batch_size=N)``: sample plus statistics (the reductions in the
                        sampler's own compiled call, the heads being known from the graph)
    ... reduced apart   the same with the reductions as a second compiled call (as for a model
                        whose heads need the first chunk's values, or under a strategy)
    predict, default    ``predict(x)``: the default chunking on top
    """
    model, x = workload.model, workload.x
    rows = x.shape[0]
    base = baselines(model, x, passes)
    xt = tf.constant(x)
    masked_fn, _ = split_passes(model, rows, passes, training=True)

    engine = mcdrop.MCDropout(model, num_samples=passes, seed=0, verbose=0)
    engine.predict(x, batch_size=rows)  # decides the heads
    samples = engine.sample(x, batch_size=rows)

    block = tf.constant(samples[None])  # (1, T, N, C): one block, as the compiled step leaves it

    def reductions():
        for head in engine.heads:
            engine._reducer(head, block, block.shape[1])

    candidates = {
        "floor": base["floor"],
        "floor + masks": lambda: masked_fn(xt).numpy(),
        "sample, one block": lambda: engine.sample(x, batch_size=rows),
        "reductions": reductions,
        "predict, one block": lambda: engine.predict(x, batch_size=rows),
        "... reduced apart": lambda: _reduced_apart(engine, x, rows),
        "predict, default": lambda: engine.predict(x),
    }
    ms = {k: v * 1e3 for k, v in interleaved(candidates, repeats).items()}
    chunk_rows, chunk_passes = engine.plan(rows)
    print(f"\nProfile: {workload.name}  (N={rows}, T={passes}, best of {repeats})")
    for name, value in ms.items():
        print(f"  {name:20s} {value:9.1f} ms   {value / ms['floor']:5.2f}x floor")
    print(f"  Keras' masks over the floor:         {ms['floor + masks'] - ms['floor']:7.1f} ms")
    print(f"  mcdrop's masks, transfer and checks (sample, one block - floor): "
          f"{ms['sample, one block'] - ms['floor']:7.1f} ms")
    print(f"  statistics (predict - sample, one block; sample copies every pass to the host, predict does not): "
          f"{ms['predict, one block'] - ms['sample, one block']:7.1f} ms "
          f"(the reductions alone: {ms['reductions']:.1f} ms)")
    print(f"  one compiled call per block instead of two (predict, one block / ... reduced apart): "
          f"{ms['predict, one block'] / ms['... reduced apart']:.3f}")
    print(f"  default chunking ({chunk_rows} rows x {chunk_passes} passes per call) over one block: "
          f"{ms['predict, default'] - ms['predict, one block']:7.1f} ms")
    return {"name": workload.name, "rows": rows, "passes": passes, "chunk": [chunk_rows, chunk_passes],
            "ms": {k: round(v, 3) for k, v in ms.items()}}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {text!r}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=_positive_int, default=7, help="best of k (default 7)")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
                        metavar="NAME", help=f"any of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--profile", action="store_true",
                        help="also split mcdrop's time on the MLP beyond the floor")
    parser.add_argument("--json", metavar="PATH", help="write every figure and the machine to this JSON file")
    args = parser.parse_args(argv)
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json: no such folder for {args.json!r}")

    info = machine()
    load = info["load_average"]
    print(f"CPU: {info['cpu']} ({info['cores']} logical cores), load average "
          f"{'n/a' if load is None else ' '.join(f'{v:.1f}' for v in load)}")
    print(f"tensorflow {info['tensorflow']}, keras {info['keras']}, devices: {info['devices']}, "
          f"best of {args.repeats}, interleaved")
    results = {"machine": info, "passes": T, "repeats": args.repeats, "workloads": {}}
    for key in args.workloads:
        workload = WORKLOADS[key]()
        results["workloads"][key] = measure(workload, args.repeats)
    if args.profile:
        results["profile"] = profile(WORKLOADS["mlp"](), args.repeats)
    return finish(results, args.json)


if __name__ == "__main__":
    main()
