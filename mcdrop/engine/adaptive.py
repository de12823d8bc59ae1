r"""A sample count chosen by the error you accept: ``predict(x, num_samples="auto", tolerance=...)``.

Passes are added in chunks (absolute pass indices ``[t, t + c)``, so a longer run extends the same
draws) over every row of ``x``; after each chunk the running sums give the Monte Carlo standard
error of every reported mean,

.. math::

    \mathrm{SE}_{ik} = \sqrt{\frac{s^2_{ik}}{T}}, \qquad s^2_{ik} = \frac{1}{T-1}\sum_{t=1}^T (y_{tik} - \bar y_{ik})^2,

for row :math:`i` and class (or output dimension) :math:`k` — class probabilities for a classifier,
predicted means for a regression model. The run stops at the first chunk boundary where the
largest of them, over all rows, classes and model outputs, is below ``tolerance``, or at
``max_samples`` (with a :class:`SampleCountWarning`). One T serves every row: no row stops early.

The accumulators add passes in pass order, so with a seed the result equals, bit for bit, the
fixed-T prediction ``MCDropout(model, num_samples=pred.num_samples, seed=seed,
passes_per_chunk=c).predict(x)``: the same masks (keyed by absolute pass index) through compiled
calls of the same shape. Under the fixed run's own default plan (all T passes in one call) the
masks are still identical and the outputs agree to float32 rounding (TensorFlow's kernels may
vectorise a batch of another shape differently).

The standard error is itself estimated from the passes: stopping when it first dips below the
tolerance makes the reported value slightly optimistic, most at small T. A first check after two
chunks at least (and never before 10 passes) keeps that effect small.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

from mcdrop._validation import check_float, check_int, invalid
from mcdrop.engine import inputs as _inputs
from mcdrop.engine._plan import count_rows
from mcdrop.engine._summarise import PieceSummary, ReducedStep, join_rows
from mcdrop.engine.sampler import CPU_ROW_PASSES, charged_width, plan_chunks

__all__ = ["predict_adaptive", "SampleCountWarning", "DEFAULT_CHUNK", "MIN_SAMPLES"]

#: Passes added per step when the engine has no ``passes_per_chunk``.
DEFAULT_CHUNK = 10
#: Fewest passes before the first check (the standard error of fewer is too noisy to stop on).
MIN_SAMPLES = 10


class SampleCountWarning(UserWarning):
    """``max_samples`` passes ran and the Monte Carlo standard error is still above the tolerance."""


def worst_standard_error(predictions) -> float:
    """The largest Monte Carlo standard error of any reported mean (NaN below two passes)."""
    worst = 0.0
    for pred in predictions:
        se = pred.standard_error
        if pred.num_samples < 2 or np.any(np.isnan(se)):
            return float("nan")
        worst = max(worst, float(np.max(se)) if se.size else 0.0)
    return worst


def predict_adaptive(engine, x, *, num_samples, tolerance, max_samples, return_samples=None, batch_size=None,
                     verbose=None, out=None, overwrite=False, row_offset=0):
    """Run chunks of passes until every reported mean's standard error is below ``tolerance``.

    Parameters are those of :meth:`MCDropout.predict <mcdrop.MCDropout.predict>`. ``x`` is read
    once per chunk of passes, so it must be an array (or list/dict of arrays) or a re-iterable
    dataset, not a one-shot iterator. Memory: the running sums of every row, O(N·C), plus one
    chunk's reductions, O(N·C) (and its passes when samples are kept); with ``out`` the final
    prediction is written to the store.

    Returns
    -------
    ClassificationPrediction or RegressionPrediction (list/dict for multi-output models)
        ``num_samples`` is the T the run stopped at.
    """
    results, _ = run_adaptive(engine, x, num_samples=num_samples, tolerance=tolerance, max_samples=max_samples,
                              return_samples=return_samples, batch_size=batch_size, verbose=verbose, out=out,
                              overwrite=overwrite, row_offset=row_offset)
    return engine._pack_outputs(results)


def _check_args(x, num_samples, tolerance, max_samples, row_offset):
    if num_samples != "auto":
        raise invalid("num_samples", "'auto' (a fixed T is set on the engine: MCDropout(model, num_samples=T))",
                      num_samples)
    if tolerance is None:
        raise invalid("tolerance", "a number > 0 with num_samples='auto'", tolerance, error=TypeError)
    tolerance = check_float(tolerance, "tolerance", low=0.0, low_inclusive=False)
    max_samples = 1000 if max_samples is None else check_int(max_samples, "max_samples", minimum=2)
    row_offset = check_int(row_offset, "row_offset", minimum=0)
    if _inputs.is_streaming(x) and iter(x) is x:
        raise invalid("x", "arrays or a re-iterable dataset with num_samples='auto' (it is read once per "
                      "chunk of passes)", x, error=TypeError)
    return tolerance, max_samples, row_offset


def run_adaptive(engine, x, *, num_samples, tolerance, max_samples, return_samples=None, batch_size=None,
                 verbose=None, out=None, overwrite=False, row_offset=0):
    """:func:`predict_adaptive`'s work: returns (the flat list of per-output predictions, the heads)."""
    tolerance, max_samples, row_offset = _check_args(x, num_samples, tolerance, max_samples, row_offset)
    chunk = min(engine.passes_per_chunk or DEFAULT_CHUNK, max_samples)
    n = None if _inputs.is_streaming(x) else count_rows(x)
    rows, _ = plan_chunks(n, max_samples, charged_width(engine._widths, chunk), engine.memory_budget,
                          batch_size or engine.batch_size,
                          chunk, row_passes=None if engine._on_accelerator else CPU_ROW_PASSES)
    seed, seed_pair = engine._seed_pair()
    step = ReducedStep(engine, seed_pair, keep_samples=return_samples)
    summary = PieceSummary(step, return_samples, {"mask": engine.mask, "seed": seed})  # every row of x
    t, worst = 0, float("nan")
    first_check = min(max(MIN_SAMPLES, 2 * chunk), max_samples)
    with engine._sink(x, out, overwrite) as sink, _progress(engine, verbose, max_samples) as bar:
        sink.open_early(len(engine._activations))  # refuse an existing store before any pass runs
        while t < max_samples:
            stop = min(t + chunk, max_samples)
            idx = np.arange(t, stop)
            padded = np.concatenate([idx, np.full(chunk - len(idx), idx[-1])]) if len(idx) < chunk else idx
            pieces = list(engine._run(x, batch_size=rows, verbose=0, step=step, row_offset=row_offset,
                                      chunks=[(padded, len(idx))], receiver=_OneChunk))
            if not pieces:
                raise invalid("x", "at least one row", x)
            summary.feed(join_rows([piece.outputs for piece in pieces]))
            bar.update(stop - t)
            t = stop
            if t < first_check:
                continue
            worst = worst_standard_error(summary.result())
            bar.set_postfix_str(f"worst SE {worst:.3g} / tolerance {tolerance:.3g}")
            if worst < tolerance:
                break
        if not worst < tolerance:
            warnings.warn(f"num_samples='auto' ran max_samples={max_samples} passes and the largest Monte Carlo "
                          f"standard error is {worst:.3g}, above the tolerance {tolerance:.3g}: the means are less "
                          "precise than asked. Raise max_samples or the tolerance.", SampleCountWarning, stacklevel=4)
        sink.append(summary.result())
        return sink.result(), step.heads


class _OneChunk:
    """A receiver for one pass chunk over one piece of rows: its per-output reductions."""

    def __init__(self):
        self.outputs = None

    def feed(self, outputs):
        self.outputs = outputs


def _progress(engine, verbose, total):
    from tqdm.auto import tqdm

    verbose = engine.verbose if verbose is None else verbose
    show = sys.stderr.isatty() if verbose == "auto" else bool(verbose)
    return tqdm(total=total, disable=not show, desc="MC passes (auto)", unit="passes", leave=False)
