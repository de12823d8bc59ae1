r"""The passes of a block reduced on the device: what the accumulators need, not every pass.

The compiled sampler leaves a block's per-pass outputs on the device as a tensor shaped
``(R, Tc, n, ...)`` (R blocks: one per replica, Tc passes, n rows). A second compiled function, one
per head and output signature, reads them there and returns, per block and row, O(n·C) numbers in
float64 (the precision of the host's accumulators):

=========================  =====================================================================
``first``                  the block's first pass (probabilities, or predicted means): the shift
``sum``, ``sum_sq``        :math:`\sum_t (x_t - x_{first})`, :math:`\sum_t (x_t - x_{first})^2`
``sum_entropy``            classification: :math:`\sum_t H[p_t]`, the per-pass entropies
``votes``                  classification: per class, the passes whose argmax it is
``sum_variance``           Gaussian regression head: :math:`\sum_t \sigma^2_t`
``nonfinite``              per row: a NaN or infinity in any pass (checked before anything is used)
``spread``                 per row: :math:`\max_t |x_t - x_0|` of the raw output (0: no noise reached it)
``bad``, ``bad_value``     per row: a pass that breaks the head's contract ('probs' rows that do not
                           sum to one, a sigmoid 'probs' unit outside [0, 1], a negative
                           ``'variance'``), and the offending value of the first such pass
=========================  =====================================================================

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

__all__ = ["PassReducer"]

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


def _entropy(p):
    """Per pass, :math:`-\\sum_c p_c \\log p_c` with 0 log 0 = 0."""
    return -tf.reduce_sum(tf.math.xlogy(p, p), axis=-1)


def _probabilities(x, outputs: str):
    """(R, Tc, n, C) float64 class probabilities from raw outputs, and the contract flags (R, Tc, n) and
    values: sigmoid 'probs' outside [0, 1], or 'probs' rows that do not sum to one."""
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
    if outputs == "logits":
        return tf.nn.softmax(z, axis=-1), None, None
    sums = tf.reduce_sum(z, axis=-1)
    flags = (tf.abs(sums - 1.0) > PROB_ATOL) | tf.reduce_any(z < -PROB_ATOL, axis=-1)
    return z, flags, sums


def _classification(x, head):
    p, flags, values = _probabilities(x, head.outputs)
    first, s1, s2 = _moments(p)
    winners = tf.argmax(p, axis=-1, output_type=tf.int32)
    votes = tf.reduce_sum(tf.one_hot(winners, tf.shape(p)[-1], dtype=tf.int32), axis=1)
    bad, bad_value = _none_bad(p) if flags is None else _first_bad(flags, values)
    return {"first": first, "sum": s1, "sum_sq": s2, "sum_entropy": tf.reduce_sum(_entropy(p), axis=1),
            "votes": votes, "bad": bad, "bad_value": bad_value}


def _variances(s, parameterisation):
    if parameterisation == "log_variance":
        return tf.exp(s)
    if parameterisation == "variance":
        return s
    if parameterisation == "std":
        return s * s
    return tf.square(tf.nn.softplus(s))


def _regression(x, head):
    heteroscedastic = head.heteroscedastic
    if heteroscedastic is None:
        first, s1, s2 = _moments(tf.cast(x, tf.float64))
        bad, bad_value = _none_bad(x)
        return {"first": first, "sum": s1, "sum_sq": s2, "bad": bad, "bad_value": bad_value}
    d = x.shape[-1] // 2
    s = tf.cast(x[..., d:], tf.float64)
    first, s1, s2 = _moments(tf.cast(x[..., :d], tf.float64))
    axes = list(range(3, s.shape.rank))
    bad, bad_value = (_first_bad(tf.reduce_any(s < 0, axis=axes), tf.reduce_min(s, axis=axes))
                      if heteroscedastic == "variance" else _none_bad(x))
    return {"first": first, "sum": s1, "sum_sq": s2, "sum_variance": tf.reduce_sum(_variances(s, heteroscedastic), 1),
            "bad": bad, "bad_value": bad_value}


_REDUCTIONS = {ClassificationHead: _classification, RegressionHead: _regression}


def _reduce(raw, valid, head):
    """The reductions of ``raw`` (R, Tc, n, ...), over its first ``valid`` passes, for ``head``."""
    x = raw[:, :valid]
    if not x.dtype.is_floating:  # an integer or boolean output: read as float64, always finite
        x = tf.cast(x, tf.float64)
    axes = list(range(3, x.shape.rank))
    stats = {"nonfinite": tf.reduce_any(~tf.math.is_finite(x), axis=[1, *axes]),
             "spread": tf.reduce_max(tf.abs(x - x[:, :1]), axis=[1, *axes])}
    if x.shape.rank == 3:
        x = x[..., None]
    stats.update(_REDUCTIONS[type(head)](x, head))
    return stats


#: Values per call from which the reductions are compiled with XLA even when ``jit_compile`` is off: XLA
#: fuses their dozen elementwise passes over the float64 values into a few (the MLP of
#: ``benchmarks/engine.py``, 50 x 1000 x 10 values: 7.6 ms against 16.6 ms). Below it, the compilation per
#: new shape would cost more than it saves. The choice depends only on the call's shape, which the plan
#: fixes, so results stay bit-identical for any batching of the input stream; XLA and TensorFlow's
#: kernels agree to float64 rounding (tested). The reductions draw no random numbers.
XLA_VALUES = 2**18


class PassReducer:
    """One compiled reduction per (head, output signature), cached; ``run_eagerly`` runs it without
    ``tf.function`` (debugging). ``traces`` counts its traces."""

    def __init__(self, *, run_eagerly: bool = False, jit_compile: bool = False):
        self.run_eagerly = run_eagerly
        self.jit_compile = jit_compile
        self._functions = {}
        self.traces = 0

    def _function(self, head, raw):
        spec = tf.TensorSpec((None, None, None, *raw.shape[3:]), raw.dtype)
        jit = self.jit_compile or raw.shape.num_elements() >= XLA_VALUES
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
        stats = self._function(head, raw)(raw, tf.constant(valid, tf.int32))
        return {name: value.numpy() for name, value in stats.items()}


def block_of(stats: dict, index: int, rows: int, count: int) -> PassBlock:
    """Replica ``index``'s first ``rows`` rows of the reductions ``stats`` as a :class:`PassBlock`."""
    pick = {name: stats[name][index, :rows] for name in ("first", "sum", "sum_sq", "sum_entropy", "votes",
                                                         "sum_variance") if name in stats}
    return PassBlock(count=count, **pick)
