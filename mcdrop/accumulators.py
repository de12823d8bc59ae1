"""Running sums over Monte Carlo passes, fed chunk by chunk (numpy only).

The engine hands each chunk of per-pass outputs, shaped ``(T_chunk, N, ...)``, to an
accumulator; the accumulator adds the passes into float64 sums strictly in pass
order, ``((s + x_0) + x_1) + ...``, continuing from the running sum, with the pure
functions of :mod:`mcdrop._stats` (in-order sums, the shifted moments of
:class:`ShiftedMoments`, entropies, vote counts). The sums are therefore bit-identical
whatever the pass-chunk size (a chunk's own ``sum(axis=0)`` added to the running sum
would associate differently), and the means and variances do not cancel
catastrophically at a large offset (see :class:`ShiftedMoments`).

An accumulator's :meth:`result` is a plain named tuple of arrays
(:class:`ClassificationStatistics`, :class:`RegressionStatistics`); the prediction types
of :mod:`mcdrop.predictive` are built from it (``from_statistics``) one layer up, so this
module never imports them.

The engine itself reduces each block's passes on the device and hands the accumulators a
:class:`PassBlock` (the block's first pass and sums shifted by it, entropy sums, votes); ``merge``
adds it after the passes fed so far with :meth:`ShiftedMoments.merge`, in pass order, in float64.

Memory is O(N·C) unless samples are kept.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mcdrop._stats import ShiftedMoments, add_in_order, entropy, vote_counts
from mcdrop._validation import PROB_ATOL, invalid, nonfinite_row_indices

__all__ = [
    "PassBlock",
    "ClassificationAccumulator",
    "RegressionAccumulator",
    "ClassificationStatistics",
    "RegressionStatistics",
    "ShiftedMoments",
    "entropy",
    "nonfinite_rows",
]


class ClassificationStatistics(NamedTuple):
    """What a :class:`ClassificationAccumulator` summed, as plain arrays.

    Attributes
    ----------
    mean, variance : ndarray of shape (N, C)
        Mean and population variance of the class probabilities over passes.
    expected_entropy : ndarray of shape (N,)
        Mean over passes of the per-pass entropy, in nats.
    votes : ndarray of shape (N, C)
        How many passes put each class first.
    num_samples : int
        T, the number of passes.
    samples : ndarray of shape (T, N, C) or None
        The per-pass probabilities, when kept.
    """

    mean: np.ndarray
    variance: np.ndarray
    expected_entropy: np.ndarray
    votes: np.ndarray
    num_samples: int
    samples: np.ndarray | None


class RegressionStatistics(NamedTuple):
    """What a :class:`RegressionAccumulator` summed, as plain arrays.

    Attributes
    ----------
    mean, epistemic_variance : ndarray of shape (N, D)
        Mean and population variance over passes of the predicted means.
    aleatoric_variance : ndarray of shape (N, D)
        Mean over passes of the predicted variances (zeros without a Gaussian head).
    num_samples : int
        T, the number of passes.
    heteroscedastic : bool
        Whether per-pass variances were fed.
    samples, sample_variances : ndarray of shape (T, N, D) or None
        The per-pass means and variances, when kept.
    """

    mean: np.ndarray
    epistemic_variance: np.ndarray
    aleatoric_variance: np.ndarray
    num_samples: int
    heteroscedastic: bool
    samples: np.ndarray | None
    sample_variances: np.ndarray | None


class PassBlock(NamedTuple):
    """The passes of one block of rows reduced over the passes (what the engine's compiled step returns
    instead of the passes themselves, so only O(N·C) per block reaches the host).

    Attributes
    ----------
    count : int
        How many passes the block holds.
    first : ndarray of shape (N, ...)
        The block's first pass (probabilities, or predicted means), its shift.
    sum, sum_sq : ndarray of shape (N, ...)
        :math:`\\sum_t (x_t - x_{first})` and :math:`\\sum_t (x_t - x_{first})^2`, float64.
    sum_entropy : ndarray of shape (N,) or None
        Classification: the sum over the block's passes of the per-pass entropy, in nats.
    votes : ndarray of shape (N, C) or None
        Classification: how many of the block's passes put each class first.
    sum_variance : ndarray of shape (N, D) or None
        Gaussian regression head: the sum over passes of the predicted variances.
    """

    count: int
    first: np.ndarray
    sum: np.ndarray
    sum_sq: np.ndarray
    sum_entropy: np.ndarray | None = None
    votes: np.ndarray | None = None
    sum_variance: np.ndarray | None = None


class _Accumulator:
    """Shared bookkeeping: pass count, optional kept samples."""

    def __init__(self, *, keep_samples: bool):
        self.keep_samples = keep_samples
        self.count = 0
        self._kept: list[np.ndarray] = []
        self._kept_var: list[np.ndarray] = []

    def _keep(self, chunk: np.ndarray) -> None:
        if self.keep_samples:
            self._kept.append(np.array(chunk, copy=True))

    def keep(self, samples: np.ndarray, variances: np.ndarray | None = None) -> None:
        """Keep one chunk of per-pass values (T_chunk, N, ...) for ``result().samples`` when the accumulator
        keeps samples (their statistics come from :meth:`merge`)."""
        self._keep(samples)
        if variances is not None and self.keep_samples:
            self._kept_var.append(np.array(variances, copy=True))

    def _merge_count(self, block: PassBlock) -> None:
        self._moments.merge(block.count, block.first, block.sum, block.sum_sq)
        self.count += int(block.count)

    def _samples(self) -> np.ndarray | None:
        if not self.keep_samples or not self._kept:
            return None
        return np.concatenate(self._kept, axis=0)

    def _check_started(self) -> None:
        if self.count == 0:
            raise ValueError("Invalid state: no pass was accumulated; call `update` with at least one pass.")


class ClassificationAccumulator(_Accumulator):
    """Accumulates per-pass class probabilities ``(T_chunk, N, C)``.

    Keeps: shifted sums of p and p² (:class:`ShiftedMoments`), sum of per-pass entropies, vote counts of the
    per-pass argmax — everything :class:`~mcdrop.predictive.ClassificationPrediction` needs, returned by
    :meth:`result` as :class:`ClassificationStatistics`.
    """

    def __init__(self, *, keep_samples: bool = False, validate: bool = True):
        super().__init__(keep_samples=keep_samples)
        self.validate = validate
        self._moments, self._sum_entropy, self._votes = ShiftedMoments(), None, None

    def update(self, probs: np.ndarray) -> None:
        probs = np.asarray(probs)
        if probs.ndim != 3:
            raise invalid("probs", "per-pass probabilities of shape (T, N, C)", probs)
        if self.validate:
            _check_pass_probs(probs)
        if self._votes is None:
            self._votes = np.zeros(probs.shape[1:], dtype=np.int64)
        elif probs.shape[1:] != self._votes.shape:
            raise invalid("probs", f"passes of shape (T, {', '.join(map(str, self._votes.shape))})", probs)
        p = probs.astype(np.float64)
        self._moments.update(p)
        self._sum_entropy = add_in_order(self._sum_entropy, entropy(p))
        self._votes += vote_counts(p)  # integer counts are exact in any order
        self.count += probs.shape[0]
        self._keep(probs)

    def merge(self, block: PassBlock) -> None:
        """Add a block of passes already reduced (:class:`PassBlock`), after those fed so far."""
        if self._votes is None:
            self._votes = np.zeros(block.votes.shape, dtype=np.int64)
        elif block.votes.shape != self._votes.shape:
            raise invalid("block", f"passes of shape (T, {', '.join(map(str, self._votes.shape))})", block.votes)
        self._merge_count(block)
        self._sum_entropy = (np.array(block.sum_entropy, dtype=np.float64) if self._sum_entropy is None
                             else self._sum_entropy + block.sum_entropy)
        self._votes += block.votes

    def result(self) -> ClassificationStatistics:
        """The statistics of the passes fed so far."""
        self._check_started()
        t = self.count
        return ClassificationStatistics(
            mean=self._moments.mean(),
            variance=self._moments.variance(),
            expected_entropy=self._sum_entropy / t,
            votes=self._votes.copy(),
            num_samples=t,
            samples=self._samples(),
        )


class RegressionAccumulator(_Accumulator):
    """Accumulates per-pass predicted means ``(T_chunk, N, D)`` and, for a Gaussian
    head, per-pass predicted variances of the same shape; :meth:`result` returns
    :class:`RegressionStatistics`."""

    def __init__(self, *, heteroscedastic: bool = False, keep_samples: bool = False):
        super().__init__(keep_samples=keep_samples)
        self.heteroscedastic = heteroscedastic
        self._moments, self._sum_var, self._shape = ShiftedMoments(), None, None

    def update(self, means: np.ndarray, variances: np.ndarray | None = None) -> None:
        means = np.asarray(means)
        if means.ndim < 2:
            raise invalid("means", "per-pass outputs of shape (T, N, ...)", means)
        if self.heteroscedastic != (variances is not None):
            raise ValueError(
                "Invalid value for argument `variances`: expected per-pass variances exactly when the "
                f"accumulator is heteroscedastic (heteroscedastic={self.heteroscedastic}), "
                f"received {'none' if variances is None else 'an array'}."
            )
        if self._shape is None:
            self._shape = means.shape[1:]
            self._sum_var = np.zeros(self._shape)
        elif means.shape[1:] != self._shape:
            raise invalid("means", f"passes of shape (T, {', '.join(map(str, self._shape))})", means)
        if variances is not None:
            variances = np.asarray(variances)
            if variances.shape != means.shape:
                raise invalid("variances", f"an array of the means' shape {means.shape}", variances)
            if np.any(variances < 0):
                raise invalid("variances", "non-negative variances", variances)
        self._moments.update(means)
        if variances is not None:
            self._sum_var = add_in_order(self._sum_var, variances.astype(np.float64))
        self.count += means.shape[0]
        self._keep(means)
        if self.keep_samples and variances is not None:
            self._kept_var.append(np.array(variances, copy=True))

    def merge(self, block: PassBlock) -> None:
        """Add a block of passes already reduced (:class:`PassBlock`), after those fed so far."""
        if self.heteroscedastic != (block.sum_variance is not None):
            raise invalid("block", f"summed variances exactly when heteroscedastic={self.heteroscedastic}", block)
        if self._shape is None:
            self._shape = block.first.shape
            self._sum_var = np.zeros(self._shape)
        elif block.first.shape != self._shape:
            raise invalid("block", f"passes of shape (T, {', '.join(map(str, self._shape))})", block.first)
        self._merge_count(block)
        if block.sum_variance is not None:
            self._sum_var = self._sum_var + block.sum_variance

    def result(self) -> RegressionStatistics:
        """The statistics of the passes fed so far."""
        self._check_started()
        t = self.count
        return RegressionStatistics(
            mean=self._moments.mean(),
            epistemic_variance=self._moments.variance(),
            aleatoric_variance=self._sum_var / t,
            num_samples=t,
            heteroscedastic=self.heteroscedastic,
            samples=self._samples(),
            sample_variances=(np.concatenate(self._kept_var, axis=0)
                              if self.keep_samples and self._kept_var else None),
        )


def nonfinite_rows(outputs: np.ndarray) -> int:
    """How many input rows (axis 1 of a (T, N, ...) array) hold a NaN or infinity in any pass."""
    return int(nonfinite_row_indices([outputs], axis=1).size)


def _check_pass_probs(probs: np.ndarray) -> None:
    """Per-pass outputs declared as probabilities must be probabilities."""
    if probs.shape[-1] < 2:
        raise invalid("outputs", "at least two class probabilities per row", probs)
    if not np.all(np.isfinite(probs)):
        raise ValueError(
            f"Invalid model output: {nonfinite_rows(probs)} row(s) hold NaN or infinite values."
        )
    sums = probs.sum(axis=-1, dtype=np.float64)
    bad = (np.abs(sums - 1.0) > PROB_ATOL) | np.any(probs < -PROB_ATOL, axis=-1)
    if np.any(bad):
        rows = int(np.sum(np.any(bad, axis=0)))
        first = float(sums[bad].ravel()[0])
        raise ValueError(
            "Invalid value for argument `outputs`: expected 'probs' outputs whose rows sum to one, "
            f"received {rows} row(s) that do not (first sum: {first:.6g}). "
            "Pass outputs='logits' if the model returns unnormalised scores."
        )
