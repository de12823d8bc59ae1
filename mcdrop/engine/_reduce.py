r"""The passes of a block reduced on the device: what the accumulators need, not every pass.

The compiled sampler leaves a block's per-pass outputs on the device as a tensor shaped
``(R, Tc, n, ...)`` (R blocks: one per replica, Tc passes, n rows). A compiled function, one per
head and output signature, reads them there and returns, per block and row, O(n·C) numbers in
float64 (the precision of the host's accumulators):

=========================  =====================================================================
``first``                  the block's first pass (probabilities, or predicted means): the shift
``sum``, ``sum_sq``        :math:`\sum_t (x_t - x_{first})`, :math:`\sum_t (x_t - x_{first})^2`
``sum_entropy``            classification: :math:`\sum_t H[p_t]`, the per-pass entropies
``votes``                  classification: per class, the passes whose argmax it is
``sum_variance``           Gaussian regression head: :math:`\sum_t \sigma^2_t`
``nonfinite``              per row: a NaN or infinity in any pass (checked before anything is used)
``varies``                 per row: some pass differs from the first (False: no noise reached it)
``bad``, ``bad_value``     per row: a pass that breaks the head's contract ('probs' rows that do not
                           sum to one, a sigmoid 'probs' unit outside [0, 1], a negative
                           ``'variance'``), and the offending value of the first such pass
=========================  =====================================================================

When the heads are known before the first pass chunk (a graph model whose output activations and
stated options settle them), this function runs inside the sampler's own compiled call
(:class:`Reductions`), so a block costs one call; otherwise (and under a distribution strategy) it is
a second call on the sampler's outputs. Both call the same compiled reduction.

Cost. Where the moments are taken of the raw values themselves (a multi-class 'probs' output, a
plain regression output, of any dtype but float64), ``nonfinite`` and ``varies`` come from the
shifted squares already summed, not from two more passes over the values: each square is >= 0 or
NaN, so one NaN or infinity makes the row's sum NaN or infinite, and a finite square of a float32
difference never overflows float64 and is never 0 unless the difference is. Winners are taken on the
raw float32 values where the probabilities are those values widened (the same winner, ties included).
The per-pass entropies stay float64 throughout (``xlogy`` of float64 probabilities): a float32 log
would move the expected entropy by ~1e-8 and the mutual information, a small difference of two
entropies, by as much; that is the reductions' largest cost left (about half of them under XLA). A
split of each entropy into float64 terms of the first pass and a float32 second-order remainder was
measured and was slower (three times, from its extra elementwise passes), so it was not kept. For
logits the entropy comes from the log-probabilities :math:`z - \log\sum e^z` (:func:`_softmax`): one
log per pass instead of one per class (under XLA 5.1 ms against 3.9 ms on 50 x 1000 x 10 logits),
and no log of a rounded probability.
Identical passes give exactly 0 variance (shifted sums of zeros) and the prediction reports exactly 0
mutual information for rows whose variance is 0 (:func:`mcdrop._stats.mutual_information`).

The host merges blocks in pass order (:meth:`mcdrop._stats.ShiftedMoments.merge`). The reductions
are TensorFlow's sums over the pass axis of a tensor whose shape is fixed by the plan, so with a
seed the same rows give the same bits for any batching of the input stream.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mcdrop._validation import PROB_ATOL
from mcdrop.accumulators import PassBlock
from mcdrop.heads import ClassificationHead, RegressionHead

__all__ = ["PassReducer", "Reductions", "block_of", "XLA_VALUES"]

#: How far a single sigmoid 'probs' unit may stray outside [0, 1] (as the host check allowed).
_UNIT_ATOL = 1e-6


def _first_bad(flags, values):
    """Per (block, row): whether any pass is flagged, and the value of the first flagged pass (any value
    where none is). ``flags``, ``values``: (R, Tc, n)."""
    index = tf.argmax(tf.cast(flags, tf.int32), axis=1, output_type=tf.int32)  # the first True
    value = tf.gather(tf.transpose(values, [0, 2, 1]), index[..., None], batch_dims=2)[..., 0]
    return tf.reduce_any(flags, axis=1), value


def _none_bad(x):
    """For a head whose passes cannot break its contract: no row flagged."""
    none = tf.zeros_like(x[:, 0, :, 0], tf.float64)
    return none > 0, none


def _moments(x):
    first = x[:, 0]
    d = x - first[:, None]
    return first, tf.reduce_sum(d, axis=1), tf.reduce_sum(d * d, axis=1)


def _checks(raw, sum_sq=None):
    """Per (block, row): ``nonfinite`` (a NaN or infinity in any pass) and ``varies`` (some pass differs
    from the first). With ``sum_sq``, the shifted squares of exactly the raw values widened to float64
    (:func:`_widens`), both come from it: a NaN or infinity anywhere makes it NaN or infinite (each
    term is >= 0 or NaN, and no finite term overflows), and it is 0 only when every pass equals the
    first (a nonzero difference of two float32 values squares to a normal float64). Otherwise they are
    read from the raw values."""
    if sum_sq is not None:
        total = tf.reduce_sum(sum_sq, axis=list(range(2, sum_sq.shape.rank)))
        return {"nonfinite": ~tf.math.is_finite(total), "varies": total != 0}
    axes = [1, *range(3, raw.shape.rank)]
    return {"nonfinite": tf.reduce_any(~tf.math.is_finite(raw), axis=axes),
            "varies": tf.reduce_any(raw != raw[:, :1], axis=axes)}


def _widens(raw) -> bool:
    """Whether float64 holds ``raw``'s values and their differences' squares exactly enough for
    :func:`_checks` (float16/32, bfloat16 and integers do; float64 itself could overflow)."""
    return raw.dtype != tf.float64


def _entropy(p):
    """Per pass, :math:`-\\sum_c p_c \\log p_c` with 0 log 0 = 0."""
    return -tf.reduce_sum(tf.math.xlogy(p, p), axis=-1)


def _softmax(z):
    """Float64 probabilities from logits ``z`` (R, Tc, n, C), and each pass's entropy from the log-probabilities
    :math:`z - \log\sum e^z` (one log per pass, not one per class, and no log of a rounded probability)."""
    shifted = z - tf.reduce_max(z, axis=-1, keepdims=True)
    exp = tf.exp(shifted)
    total = tf.reduce_sum(exp, axis=-1, keepdims=True)
    p = exp / total
    return p, -tf.reduce_sum(p * (shifted - tf.math.log(total)), axis=-1)


def _probabilities(x, outputs: str):
    """(R, Tc, n, C) float64 class probabilities from raw outputs (but several logits: :func:`_softmax`), and
    the contract flags (R, Tc, n) and values: sigmoid 'probs' outside [0, 1], or 'probs' rows that do not sum
    to one."""
    z = tf.cast(x, tf.float64)
    if x.shape[-1] == 1:
        p1 = tf.math.sigmoid(z) if outputs == "logits" else z
        if outputs == "probs":
            outside = (p1 < -_UNIT_ATOL) | (p1 > 1 + _UNIT_ATOL)
            flags, values = outside[..., 0], p1[..., 0]
        else:
            flags, values = None, None
        p1 = tf.clip_by_value(p1, 0.0, 1.0)
        return tf.concat([1.0 - p1, p1], axis=-1), flags, values
    sums = tf.reduce_sum(z, axis=-1)
    flags = (tf.abs(sums - 1.0) > PROB_ATOL) | tf.reduce_any(z < -PROB_ATOL, axis=-1)
    return z, flags, sums


def _classification(x, head, widens):
    if head.outputs == "logits" and x.shape[-1] > 1:
        (p, entropy), flags, values = _softmax(tf.cast(x, tf.float64)), None, None
    else:
        p, flags, values = _probabilities(x, head.outputs)
        entropy = _entropy(p)
    first, s1, s2 = _moments(p)
    direct = widens and head.outputs == "probs" and x.shape[-1] > 1  # p is the raw output, widened exactly
    winners = tf.argmax(x if direct else p, axis=-1, output_type=tf.int32)  # the same winner, ties included
    votes = tf.reduce_sum(tf.one_hot(winners, tf.shape(p)[-1], dtype=tf.int32), axis=1)
    bad, bad_value = _none_bad(p) if flags is None else _first_bad(flags, values)
    return {**_checks(x, s2 if direct else None), "first": first, "sum": s1, "sum_sq": s2,
            "sum_entropy": tf.reduce_sum(entropy, axis=1), "votes": votes, "bad": bad, "bad_value": bad_value}


def _variances(s, parameterisation):
    if parameterisation == "log_variance":
        return tf.exp(s)
    if parameterisation == "variance":
        return s
    if parameterisation == "std":
        return s * s
    return tf.square(tf.nn.softplus(s))


def _regression(x, head, widens):
    heteroscedastic = head.heteroscedastic
    if heteroscedastic is None:
        first, s1, s2 = _moments(tf.cast(x, tf.float64))
        bad, bad_value = _none_bad(x)
        return {**_checks(x, s2 if widens else None), "first": first, "sum": s1, "sum_sq": s2, "bad": bad,
                "bad_value": bad_value}
    d = x.shape[-1] // 2
    s = tf.cast(x[..., d:], tf.float64)
    first, s1, s2 = _moments(tf.cast(x[..., :d], tf.float64))
    axes = list(range(3, s.shape.rank))
    bad, bad_value = (_first_bad(tf.reduce_any(s < 0, axis=axes), tf.reduce_min(s, axis=axes))
                      if heteroscedastic == "variance" else _none_bad(x))
    return {**_checks(x), "first": first, "sum": s1, "sum_sq": s2,
            "sum_variance": tf.reduce_sum(_variances(s, heteroscedastic), 1), "bad": bad, "bad_value": bad_value}


_REDUCTIONS = {ClassificationHead: _classification, RegressionHead: _regression}


def _reduce(raw, valid, head):
    """The reductions of ``raw`` (R, Tc, n, ...), over its first ``valid`` passes, for ``head``."""
    x = raw[:, :valid]
    widens = _widens(x)
    if not x.dtype.is_floating:  # an integer or boolean output: read as float64, always finite
        x = tf.cast(x, tf.float64)
    if x.shape.rank == 3:
        x = x[..., None]
    return _REDUCTIONS[type(head)](x, head, widens)


#: Values per call from which the reductions are compiled with XLA even when ``jit_compile`` is off: XLA
#: fuses their dozen elementwise passes over the float64 values into a few (the MLP of
#: ``benchmarks/engine.py``, 50 x 1000 x 10 values: 7.6 ms against 16.6 ms). Below it, the compilation per
#: new shape would cost more than it saves. The choice depends only on the call's shape, which the plan
#: fixes, so results stay bit-identical for any batching of the input stream; XLA and TensorFlow's
#: kernels agree to float64 rounding (tested). The reductions draw no random numbers.
XLA_VALUES = 2**18


class PassReducer:
    """One compiled reduction per (head, output signature), cached; ``run_eagerly`` runs it without
    ``tf.function`` (debugging). ``traces`` counts its traces (also those inside a fused step,
    :class:`Reductions`)."""

    def __init__(self, *, run_eagerly: bool = False, jit_compile: bool = False):
        self.run_eagerly = run_eagerly
        self.jit_compile = jit_compile
        self._functions = {}
        self.traces = 0

    def uses_xla(self, values: int) -> bool:
        """Whether a call of ``values`` raw values (all blocks, passes, rows and units) is compiled with XLA."""
        return self.jit_compile or values >= XLA_VALUES

    def function(self, head, tail, dtype, jit: bool):
        """The reduction for ``head`` of raw outputs (R, Tc, n, *tail) of ``dtype``: ``fn(raw, valid)``."""
        spec = tf.TensorSpec((None, None, None, *tail), dtype)
        key = (head, tuple(spec.shape.as_list()), spec.dtype.name, jit)
        if key not in self._functions:
            def step(raw, valid):
                self.traces += 1
                return _reduce(raw, valid, head)

            self._functions[key] = step if self.run_eagerly else tf.function(
                step, input_signature=[spec, tf.TensorSpec([], tf.int32)], reduce_retracing=True,
                autograph=False, jit_compile=jit)
        return self._functions[key]

    def __call__(self, head, raw, valid: int) -> dict:
        """Numpy reductions of ``raw`` (R, Tc, n, ...) over its first ``valid`` passes, each (R, n, ...)."""
        fn = self.function(head, raw.shape[3:], raw.dtype, self.uses_xla(raw.shape.num_elements()))
        stats = fn(raw, tf.constant(valid, tf.int32))
        return {name: value.numpy() for name, value in stats.items()}


class Reductions:
    """What a fused step (:meth:`mcdrop.engine.sampler.CompiledSampler.function` with ``then``) returns after
    its passes: per output, the reductions for its head and, where ``keep`` says so, the raw passes
    (Tc, n, ...). Each reduction is the same compiled function :class:`PassReducer` calls on its own
    (``jit``: per output, whether with XLA), so a fused call and a separate one reduce alike. Hashable:
    one fused step is traced per input signature and (heads, keep, jit)."""

    def __init__(self, reducer: PassReducer, heads, keep, jit):
        self.reducer = reducer
        self.key = (tuple(heads), tuple(bool(k) for k in keep), tuple(bool(j) for j in jit))

    def __hash__(self):
        return hash((id(self.reducer), self.key))

    def __eq__(self, other):
        return isinstance(other, Reductions) and other.reducer is self.reducer and other.key == self.key

    def __repr__(self):
        return f"Reductions(heads={self.key[0]}, keep={self.key[1]}, jit={self.key[2]})"

    def __call__(self, outputs, valid):
        result = []
        for raw, head, keep, jit in zip(outputs, *self.key):
            stats = self.reducer.function(head, raw.shape[2:], raw.dtype, jit)(raw[None], valid)
            result.append((stats, raw if keep else None))
        return result


def block_of(stats: dict, index: int, rows: int, count: int) -> PassBlock:
    """Replica ``index``'s first ``rows`` rows of the reductions ``stats`` as a :class:`PassBlock`."""
    pick = {name: stats[name][index, :rows] for name in ("first", "sum", "sum_sq", "sum_entropy", "votes",
                                                         "sum_variance") if name in stats}
    return PassBlock(count=count, **pick)
