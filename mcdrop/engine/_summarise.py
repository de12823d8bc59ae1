"""The summariser: each pass chunk's compiled step, its reductions checked and merged per piece of rows,
and the sinks the finished pieces go to (memory or a store folder on disk).

:class:`ReducedStep` runs a chunk of passes over a group of pieces and reduces them on the device
(:mod:`mcdrop.engine._reduce`): the heads are decided from the first chunk's outputs and kept on the
step, one prediction's state, so the engine itself is not changed while it runs. Raw passes reach
the host only when samples are kept. :class:`RawStep` hands on the raw passes (``sample()``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mcdrop._validation import invalid
from mcdrop.accumulators import PassBlock
from mcdrop.engine._heads import Outputs
from mcdrop.engine._reduce import Reductions, block_of
from mcdrop.heads import RegressionHead
from mcdrop.predictive import concatenate, keeps_samples

__all__ = ["ReducedStep", "RawStep", "PieceSummary", "MemorySink", "StoreSink", "make_accumulators",
           "nonfinite_error", "join_rows", "Chunks"]


def make_accumulators(heads, return_samples, provenance) -> list:
    """One accumulator per output. Samples are kept when asked (``return_samples``), and by default for
    regression, whose predictive mixture needs them."""
    return [head.accumulator(keep_samples=keeps_samples(head, return_samples), provenance=provenance)
            for head in heads]


def nonfinite_error(rows: int, total: int) -> ValueError:
    return ValueError(
        f"Invalid model output: {rows} of {total} row(s) of `x` gave NaN or infinite values in at least one "
        "pass. Check the input values and the model's numerical stability."
    )


def join_rows(pieces) -> list:
    """One pass chunk's results of consecutive pieces of rows (each a list per output of (PassBlock, kept
    samples, kept variances)) as one result over all their rows, per output. Joining is exact: every
    statistic is per row."""
    joined = []
    for parts in zip(*pieces):
        blocks = [block for block, _, _ in parts]
        fields = {name: (None if getattr(blocks[0], name) is None
                         else np.concatenate([getattr(b, name) for b in blocks], axis=0))
                  for name in PassBlock._fields if name != "count"}
        kept = [None if parts[0][k] is None else np.concatenate([p[k] for p in parts], axis=1) for k in (1, 2)]
        joined.append((PassBlock(count=blocks[0].count, **fields), *kept))
    return joined


def _contract_error(head, bad: int, value: float, raw) -> ValueError:
    """The error for passes that break the head's contract (see :mod:`mcdrop.engine._reduce`)."""
    if isinstance(head, RegressionHead):
        return invalid("heteroscedastic", "'variance' outputs >= 0 (use 'log_variance' or 'softplus_std' for "
                       "unconstrained outputs)", head.heteroscedastic)
    if raw.shape[-1] == 1 or raw.ndim == 2:
        return invalid("outputs", "'probs' outputs in [0, 1] for a single sigmoid unit", raw,
                       detail="Pass outputs='logits' if the model returns unnormalised scores.")
    return ValueError(
        "Invalid value for argument `outputs`: expected 'probs' outputs whose rows sum to one, "
        f"received {bad} row(s) that do not (first sum: {value:.6g}). "
        "Pass outputs='logits' if the model returns unnormalised scores.")


def _first_block(raw, valid) -> Outputs:
    """The first block's ``valid`` passes of ``raw`` (blocks, Tc, n, ...), read only if asked for."""
    return Outputs((valid, *raw.shape[2:]), raw.dtype.as_numpy_dtype, lambda: raw[0, :valid].numpy())


class ReducedStep:
    """One prediction's compiled step: a chunk of passes over a group of pieces, reduced on the device.

    Calling it returns, per piece, a list per output of (:class:`~mcdrop.accumulators.PassBlock`,
    kept samples or None, kept variances or None). ``heads`` is decided on the first call: from the
    graph and the stated options when they settle it (:meth:`~mcdrop.engine._heads.HeadRules.decide_early`),
    and then the passes and their reductions run in one compiled call (:meth:`_fused`); otherwise from
    the first chunk's outputs, reduced by a second call.
    """

    def __init__(self, engine, seed_pair, *, keep_samples, heads=None):
        self.engine = engine
        self.seed_pair = seed_pair
        self.keep_samples = keep_samples  # per head (a function of it), or a bool
        self.heads = heads
        self._shapes = engine._graph_output_shapes()  # None: not all known from the graph
        if heads is None and self._shapes is not None:
            self.heads = engine._rules.decide_early([shape for shape, _ in self._shapes])

    def _fused(self, group, indices):
        """The reductions to run in the sampler's own call, or None where they cannot: heads still unknown,
        a distribution strategy, or an output shape the head refuses (the separate call raises then)."""
        engine = self.engine
        if self.heads is None or self._shapes is None or engine.sampler.strategy is not None:
            return None
        jit = []
        for head, (shape, dtype) in zip(self.heads, self._shapes):
            try:
                head.check_shape(Outputs((len(indices), group[0].size, *shape[1:]), dtype))
            except ValueError:
                return None
            jit.append(engine._reducer.uses_xla(len(indices) * group[0].size * math.prod(shape[1:])))
        keep = [keeps_samples(head, self.keep_samples) for head in self.heads]
        return Reductions(engine._reducer, self.heads, keep, jit)

    def _reduced(self, group, indices, valid) -> list:
        """Per output: (the reductions as numpy arrays, each (blocks, n, ...); the raw passes on the host,
        (blocks, Tc, n, ...), if kept, else None; the raw outputs' shape after (blocks, Tc, n) and dtype)."""
        engine = self.engine
        fused = self._fused(group, indices)
        if fused is not None:
            per_output = engine._call(group, indices, self.seed_pair, then=fused, valid=valid)
            return [({k: v.numpy() for k, v in stats.items()}, None if raw is None else raw.numpy()[None],
                     tuple(shape[1:]), dtype) for (stats, raw), (shape, dtype) in zip(per_output, self._shapes)]
        out = engine._call(group, indices, self.seed_pair)
        if self.heads is None:
            self.heads = engine._rules.decide([_first_block(o, valid) for o in out])
        result = []
        for head, raw in zip(self.heads, out):
            head.check_shape(_first_block(raw, valid))
            host = raw.numpy() if keeps_samples(head, self.keep_samples) else None
            result.append((engine._reducer(head, raw, valid), host, tuple(raw.shape[3:]), raw.dtype.as_numpy_dtype))
        return result

    def __call__(self, group, indices, valid):
        reduced = self._reduced(group, indices, valid)
        results = [[] for _ in group]
        constant = []
        for head, (stats, host, tail, dtype) in zip(self.heads, reduced):
            self._check(head, stats, group, valid, tail, dtype)
            constant.append(not any(np.any(stats["varies"][i, :piece.used]) for i, piece in enumerate(group)))
            for i, piece in enumerate(group):
                kept = head.per_pass(host[i, :valid, :piece.used]) if host is not None else (None, None)
                results[i].append((block_of(stats, i, piece.used, valid), *kept))
        self.engine._check_noise_reaches(constant, valid)
        return results

    @staticmethod
    def _check(head, stats, group, valid, tail, dtype) -> None:
        for i, piece in enumerate(group):
            bad = int(np.sum(stats["nonfinite"][i, :piece.used]))
            if bad:
                raise nonfinite_error(bad, piece.used)
        for i, piece in enumerate(group):
            flags = stats["bad"][i, :piece.used]
            if np.any(flags):
                value = float(stats["bad_value"][i, :piece.used][flags][0])
                raise _contract_error(head, int(np.sum(flags)), value, Outputs((valid, piece.used, *tail), dtype))


class RawStep:
    """The raw per-pass outputs of a chunk of passes over a group of pieces: per piece, a list per output
    of arrays (valid passes, used rows, ...)."""

    def __init__(self, engine, seed_pair):
        self.engine = engine
        self.seed_pair = seed_pair

    def __call__(self, group, indices, valid):
        out = [np.asarray(o)[:, :valid] for o in self.engine._call(group, indices, self.seed_pair)]
        self.engine._check_noise_reaches([bool(np.all(o == o[:, :1])) for o in out], valid)
        return [[o[i, :, :piece.used] for o in out] for i, piece in enumerate(group)]


class PieceSummary:
    """The receiver of one piece of rows: merges its reduced pass chunks, in pass order, into one
    accumulator per output; ``result()`` gives its predictions."""

    def __init__(self, step: ReducedStep, return_samples, provenance):
        self.step = step
        self.return_samples = return_samples
        self.provenance = provenance
        self.accumulators = None

    def feed(self, per_output) -> None:
        if self.accumulators is None:
            self.accumulators = make_accumulators(self.step.heads, self.return_samples, self.provenance)
        for acc, (block, samples, variances) in zip(self.accumulators, per_output):
            acc.merge(block)
            if samples is not None and acc.keep_samples:
                acc.keep(samples, variances)

    def result(self) -> list:
        return [acc.result() for acc in self.accumulators]


class Chunks:
    """A receiver that keeps every pass chunk's results of its piece, in pass order."""

    def __init__(self):
        self.chunks = []

    def feed(self, outputs) -> None:
        self.chunks.append(outputs)


class MemorySink:
    """Finished pieces' predictions held in memory, joined per output at the end."""

    def __init__(self, x):
        self.x = x
        self.parts = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.parts = [] if exc[0] is not None else self.parts

    def open_early(self, n_outputs: int) -> None:
        """Nothing to check before a run in memory."""

    def append(self, results) -> None:
        self.parts.append(results)

    def result(self) -> list:
        if not self.parts:
            raise invalid("x", "at least one row", self.x)
        return [concatenate(parts) for parts in zip(*self.parts)]


class StoreSink:
    """Finished pieces' predictions written to a store folder (one sub-folder per output of a multi-output
    model), through :class:`~mcdrop.store.PredictionWriter` s opened on the first piece. As a context
    manager: on an error, nothing half-written stays."""

    def __init__(self, x, out, overwrite: bool, output_names):
        self.x, self.out, self.overwrite = x, out, overwrite
        self.output_names = output_names
        self.writers = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            for writer in self.writers or ():
                writer.__exit__(*exc)

    def open(self, n_outputs: int) -> list:
        from mcdrop.store import PredictionWriter

        if n_outputs == 1:
            return [PredictionWriter(self.out, overwrite=self.overwrite)]
        names = self.output_names()
        names = names if len(names) == n_outputs else range(n_outputs)
        return [PredictionWriter(Path(self.out) / str(name), overwrite=self.overwrite) for name in names]

    def open_early(self, n_outputs: int) -> None:
        """Open the writers before any pass runs, so an existing store is refused at once (a model without
        a graph may turn out to have another number of outputs: they are opened again then)."""
        self.writers = self.open(n_outputs)

    def append(self, results) -> None:
        if self.writers is not None and len(self.writers) != len(results):
            self.writers, self.overwrite = None, True  # opened early for another number of outputs
        if self.writers is None:
            self.writers = self.open(len(results))
        for writer, result in zip(self.writers, results):
            writer.append(result)

    def result(self) -> list:
        if self.writers is None:
            raise invalid("x", "at least one row", self.x)
        return [writer.close() for writer in self.writers]
