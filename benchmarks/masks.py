"""What the masks cost: the compiled sampler's masked passes against the same work done deterministically.

Run: ``.venv/bin/python benchmarks/masks.py`` (``--repeats``, ``--workloads``, ``--mask``, ``--json``).
T = 50, one block of all N rows and all T passes per compiled call, on the workloads of
``benchmarks/_workloads.py`` (MLP, CNN, LSTM, transformer). Candidates, timed interleaved, best of k,
each returning its (T, N, ...) outputs on the host:

floor    the true floor of ``benchmarks/engine.py``: the layers before the first stochastic layer once,
         the rest deterministically on the T-times-tiled batch
none     mcdrop's compiled sampler with every noise call an identity (no draw, no multiply): the
         engine's own graph (tiling, patched calls) without masks
new      the compiled sampler with this tree's ``mcdrop/engine/noise.py``
old      the same with the noise module of another revision (``--old-ref``, default ``main``, read with
         ``git show``; ``--old-file`` for a file), patched in while the sampler is traced

Printed per workload: each candidate's time and its ratio to the floor, and the masks' own cost,
(new - none) against (old - none). Then the draws alone: per call site, what drawing a (T, 1, F) mask
costs (old against new), at the dropout widths of the workloads. The figures are ratios measured in the same run, so a shared,
noisy machine still gives comparable numbers; the CPU model is printed first. ``--cpu-time`` runs
TensorFlow on one thread and times the process's CPU seconds, which a machine shared with other jobs
disturbs far less than the wall clock.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _workloads import T, WORKLOADS, baselines, finish, interleaved, machine  # noqa: E402
from engine import _positive_int  # noqa: E402  (benchmarks/engine.py: the same --repeats check)

import tensorflow as tf  # noqa: E402

import mcdrop  # noqa: E402
import mcdrop.engine.noise as noise  # noqa: E402
from mcdrop.predictive import MASK_MODES  # noqa: E402

__all__ = ["NoNoise", "load_noise", "measure", "draw_cost", "main"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NoNoise(noise.PassContext):
    """Every noise call an identity: the sampler's graph with the masks taken out."""

    def dropout(self, x, rate, noise_features=None):
        return x

    def gaussian_dropout(self, x, rate):
        return x

    def dropout_matmul(self, x, rate, kernel, bias, activation, *, untiled=False):
        """The Dense layer a dropout is folded into, with no mask: on the tiled rows, as the floor does."""
        y = tf.linalg.matmul(self.tile(x) if untiled else x, tf.convert_to_tensor(kernel))
        y = y if bias is None else y + tf.convert_to_tensor(bias)
        return y if activation is None else activation(y)

    def alpha_dropout(self, x, rate, noise_features=None):
        return x

    def gaussian_noise(self, x, stddev):
        return x

    def rnn_mask(self, step_input, rate, count):
        one = tf.ones([], step_input.dtype)
        return one if count is None else [one] * count


def load_noise(*, ref: str | None = None, path: str | None = None):
    """The ``PassContext`` class of another revision's noise module (``git show REF:...``) or file."""
    if path is None:
        source = subprocess.run(["git", "-C", REPO, "show", f"{ref}:mcdrop/engine/noise.py"],
                                check=True, capture_output=True, text=True).stdout
        handle = tempfile.NamedTemporaryFile("w", suffix="_noise.py", delete=False)
        with handle:
            handle.write(source)
        path = handle.name
    spec = importlib.util.spec_from_file_location("_mcdrop_noise_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PassContext


@contextlib.contextmanager
def noise_class(cls):
    """``cls`` in place of ``PassContext`` wherever an engine module imported it (while tracing)."""
    patched = [(m, m.PassContext) for name, m in list(sys.modules.items())
               if name.startswith("mcdrop.engine") and getattr(m, "PassContext", None) is noise.PassContext]
    for module, _ in patched:
        module.PassContext = cls
    view = sys.modules["mcdrop.engine.view"].StochasticView
    folds = view.foldable_ids
    if not hasattr(cls, "dropout_matmul"):  # a revision from before the fold into Dense kernels: no folding
        view.foldable_ids = property(lambda self: frozenset())
    try:
        yield
    finally:
        view.foldable_ids = folds
        for module, original in patched:
            module.PassContext = original


def compiled_call(model, x, passes: int, mask: str, cls=None):
    """A zero-argument callable running the engine's compiled sampler once on all rows and passes, its
    noise traced with ``cls`` (None: this tree's). The call's arguments are captured from a
    ``sample`` call, so the benchmark follows the engine's own way of calling its sampler."""
    engine = mcdrop.MCDropout(model, num_samples=passes, seed=0, mask=mask, verbose=0)
    sampler, captured = engine.sampler, []

    class Spy:
        def __getattr__(self, name):
            return getattr(sampler, name)

        def __call__(self, *args, **kwargs):
            captured.append((args, kwargs))
            return sampler(*args, **kwargs)

    engine.sampler = Spy()
    try:
        with noise_class(cls) if cls is not None else contextlib.nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # NoNoise: "every pass gave identical values"
            engine.sample(x, batch_size=x.shape[0])  # traces the step with this noise
    finally:
        engine.sampler = sampler
    if len(captured) != 1:
        raise RuntimeError(f"expected one compiled call for one block, saw {len(captured)}")
    args, kwargs = captured[0]
    return lambda: sampler(*args, **kwargs)


#: Set by ``--cpu-time``: time the process's CPU seconds (TensorFlow on one thread) instead of the wall clock.
CPU_TIME = False


def timed(fns: dict, repeats: int) -> dict:
    """``interleaved`` (best of ``repeats``, candidates taking turns), on the wall clock or, with
    ``--cpu-time``, on the process's CPU time: on a machine shared with other jobs the CPU seconds a
    single-threaded call uses vary far less than the wall time it waits for a core."""
    if not CPU_TIME:
        return interleaved(fns, repeats)
    best = {name: float("inf") for name in fns}

    def clocked(name, fn):
        def run():
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start)
        return run

    interleaved({name: clocked(name, fn) for name, fn in fns.items()}, repeats)
    return best


def measure(workload, repeats: int, *, mask: str = "consistent", old=None, passes: int = T) -> dict:
    model, x = workload.model, workload.x
    candidates = {"floor": baselines(model, x, passes)["floor"],
                  "none": compiled_call(model, x, passes, mask, NoNoise),
                  "new": compiled_call(model, x, passes, mask)}
    if old is not None:
        candidates["old"] = compiled_call(model, x, passes, mask, old)
    ms = {k: v * 1e3 for k, v in timed(candidates, repeats).items()}
    print(f"\n{workload.name}  (N={x.shape[0]}, T={passes}, {mask} masks)")
    for name, value in ms.items():
        print(f"  {name:6s} {value:9.1f} ms   {value / ms['floor']:5.2f}x floor")
    masks = {k: ms[k] - ms["none"] for k in ("new", "old") if k in ms}
    line = f"  masks (candidate - none): new {masks['new']:+.1f} ms"
    if "old" in masks:
        line += f", old {masks['old']:+.1f} ms"
    print(line)
    return {"name": workload.name, "rows": int(x.shape[0]), "passes": passes, "mask": mask,
            "ms": {k: round(v, 3) for k, v in ms.items()},
            "over_floor": {k: v / ms["floor"] for k, v in ms.items()},
            "mask_ms": {k: round(v, 3) for k, v in masks.items()}}


def draw_cost(repeats: int, *, mask: str = "consistent", old=None, passes: int = T,
              widths=(256, 3136, 4 * 32 * 32)) -> dict:
    """The draws alone: one compiled call applying dropout at four sites to ``(passes, F)`` ones with one
    row per pass (so the mask is the work), for the dropout widths of the workloads (the MLP's 256,
    the CNN's flattened 3,136, the transformer's 4 heads x 32 x 32 attention weights); an empty
    compiled call is the baseline. Per site, in microseconds."""
    classes = {"new": noise.PassContext, **({"old": old} if old is not None else {})}
    fns, args = {}, {}
    for width in widths:
        x = tf.ones([passes, width])
        for name, cls in classes.items():
            def step(x, p, cls=cls):
                ctx = cls(p, tf.constant(1), tf.constant([1, 2], tf.int64), tf.constant(0, tf.int64), mask)
                return [ctx.dropout(x, 0.5) for _ in range(4)]

            fns[(name, width)] = tf.function(step, autograph=False)
            args[(name, width)] = (x, tf.range(passes))
        fns[("empty", width)] = tf.function(lambda x, p: [x] * 4)
        args[("empty", width)] = (x, tf.range(passes))
    times = timed({k: (lambda k=k: fns[k](*args[k])) for k in fns}, repeats)
    print(f"\nDraws alone ({mask} masks, T={passes}, one row per pass): microseconds per site, over an empty call")
    out = {}
    for width in widths:
        per = {n: (times[(n, width)] - times[("empty", width)]) / 4 * 1e6 for n in classes}
        out[width] = {k: round(v, 1) for k, v in per.items()}
        line = f"  F = {width:5d}:  new {per['new']:8.1f} us"
        if "old" in per:
            line += f"   old {per['old']:8.1f} us   old / new {per['old'] / max(per['new'], 1e-9):5.1f}x"
        print(line)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=_positive_int, default=7, help="best of k (default 7)")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
                        metavar="NAME", help=f"any of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--mask", choices=list(MASK_MODES), default="consistent")
    parser.add_argument("--old-ref", default="main", help="git revision of the old noise module (default main)")
    parser.add_argument("--old-file", metavar="PATH", help="an old noise module's file instead of --old-ref")
    parser.add_argument("--no-old", action="store_true", help="measure this tree's noise only")
    parser.add_argument("--cpu-time", action="store_true",
                        help="TensorFlow on one thread, timed by the process's CPU time (steadier on a shared machine)")
    parser.add_argument("--draws-only", action="store_true", help="only the draws alone, no workload")
    parser.add_argument("--json", metavar="PATH", help="write every figure and the machine to this JSON file")
    args = parser.parse_args(argv)
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json: no such folder for {args.json!r}")
    if args.old_file and not os.path.isfile(args.old_file):
        parser.error(f"--old-file: no such file {args.old_file!r}")
    old = None
    if not args.no_old:
        try:
            old = load_noise(ref=args.old_ref, path=args.old_file)
        except (subprocess.CalledProcessError, OSError) as error:
            detail = (getattr(error, "stderr", None) or str(error)).strip()
            parser.error(f"--old-ref: cannot read mcdrop/engine/noise.py at {args.old_ref!r}: {detail}")

    if args.cpu_time:
        global CPU_TIME
        CPU_TIME = True
        tf.config.threading.set_intra_op_parallelism_threads(1)  # before TensorFlow starts its runtime
        tf.config.threading.set_inter_op_parallelism_threads(1)
    info = machine()
    load = info["load_average"]
    print(f"CPU: {info['cpu']} ({info['cores']} logical cores), load average "
          f"{'n/a' if load is None else ' '.join(f'{v:.1f}' for v in load)}")
    print(f"tensorflow {info['tensorflow']}, keras {info['keras']}, best of {args.repeats}, interleaved, "
          f"{'CPU time, one thread' if args.cpu_time else 'wall clock'}; "
          f"old noise: {'none' if old is None else (args.old_file or args.old_ref)}")
    results = {"machine": info, "passes": T, "repeats": args.repeats, "mask": args.mask,
               "clock": "cpu" if args.cpu_time else "wall", "workloads": {}}
    for key in [] if args.draws_only else args.workloads:
        results["workloads"][key] = measure(WORKLOADS[key](), args.repeats, mask=args.mask, old=old)
    results["draws"] = draw_cost(args.repeats, mask=args.mask, old=old)
    return finish(results, args.json)


if __name__ == "__main__":
    main()
