"""Running sums over Monte Carlo passes, fed chunk by chunk (numpy only).

The engine hands each chunk of per-pass outputs, shaped ``(T_chunk, N, ...)``, to an
accumulator; the accumulator adds the passes into float64 sums strictly in pass
order, ``((s + x_0) + x_1) + ...``, continuing from the running sum. The sums are
therefore bit-identical whatever the pass-chunk size (a chunk's own ``sum(axis=0)``
added to the running sum would associate differently).

Means and variances come from *shifted* sums (:class:`ShiftedMoments`): every pass is
taken relative to the first pass, :math:`d_t = x_t - x_0`, so the sums hold numbers of
the size of the spread, not of the offset, and

.. math::

    \bar x = x_0 + \frac1T\sum_t d_t, \qquad
    \mathrm{Var} = \frac1T\sum_t d_t^2 - \Big(\frac1T\sum_t d_t\Big)^2

does not cancel catastrophically as :math:`E[x^2] - E[x]^2` does at a large offset
(two passes :math:`10^8 \pm 0.01` give 1e-4, not 0; identical passes give exactly 0).
The shift is a fixed value and the sums are sequential, so the results stay
bit-identical under any chunking.

Memory is O(N·C) unless samples are kept.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from mcdrop._validation import PROB_ATOL, invalid, nonfinite_row_indices
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

__all__ = ["ClassificationAccumulator", "RegressionAccumulator", "ShiftedMoments", "entropy", "nonfinite_rows"]


def _add_in_order(running: np.ndarray | None, chunk: np.ndarray) -> np.ndarray:
    """``running + chunk[0] + chunk[1] + ...``, left to right: a cumulative sum is sequential by
    definition (a plain ``sum`` may pair terms, depending on the array's layout). The first chunk
    starts from nothing (``0 + x`` is ``x`` exactly, so skipping it changes no bit)."""
    if running is None:
        return np.cumsum(chunk, axis=0)[-1]
    return np.cumsum(np.concatenate([running[None], chunk], axis=0), axis=0)[-1]


class ShiftedMoments:
    r"""Mean and population variance over passes, fed in pass order, numerically stable.

    Sums of :math:`d_t = x_t - x_0` and :math:`d_t^2`, with :math:`x_0` the first pass fed,
    added strictly in pass order (bit-identical whatever the chunking):

    .. math::

        \bar x = x_0 + \frac{S_1}{T}, \qquad \mathrm{Var} = \frac{S_2}{T} - \Big(\frac{S_1}{T}\Big)^2,
        \qquad S_k = \sum_t d_t^k .

    The rounding error is of order :math:`\varepsilon\,T\,(1 + z_0^2)\,\mathrm{Var}`, with
    :math:`z_0` the first pass's distance from the mean in standard deviations, whatever the offset.

    Examples
    --------
    >>> m = ShiftedMoments()
    >>> m.update(np.array([[1e8 + 0.01], [1e8 - 0.01]]))
    >>> float(m.variance()[0])  # doctest: +ELLIPSIS
    0.0001...
    """

    def __init__(self):
        self.count = 0
        self.shift = self._sum = self._sum_sq = None

    def update(self, chunk: np.ndarray) -> None:
        """Add the passes of ``chunk`` (T_chunk, ...), as float64, in order."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if self.shift is None:
            self.shift = chunk[0].copy()
        d = chunk - self.shift
        self._sum = _add_in_order(self._sum, d)
        self._sum_sq = _add_in_order(self._sum_sq, d * d)
        self.count += chunk.shape[0]

    def mean(self) -> np.ndarray:
        """(...): the mean over passes."""
        return self.shift + self._sum / self.count

    def variance(self) -> np.ndarray:
        """(...): the population variance over passes (divisor T), never negative."""
        m = self._sum / self.count
        return np.maximum(self._sum_sq / self.count - m * m, 0.0)


def entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    r"""Shannon entropy in nats, :math:`-\sum_c p_c \log p_c`, with :math:`0 \log 0 = 0`."""
    return special.entr(np.asarray(probs, dtype=np.float64)).sum(axis=axis)


class _Accumulator:
    """Shared bookkeeping: pass count, optional kept samples, provenance."""

    def __init__(self, *, keep_samples: bool, provenance: dict | None):
        self.keep_samples = keep_samples
        self.provenance = dict(provenance or {})
        self.count = 0
        self._kept: list[np.ndarray] = []

    def _keep(self, chunk: np.ndarray) -> None:
        if self.keep_samples:
            self._kept.append(np.array(chunk, copy=True))

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
    per-pass argmax — everything :class:`~mcdrop.predictive.ClassificationPrediction` needs.
    """

    def __init__(self, *, keep_samples: bool = False, provenance: dict | None = None, validate: bool = True):
        super().__init__(keep_samples=keep_samples, provenance=provenance)
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
        n_classes = probs.shape[-1]
        p = probs.astype(np.float64)
        self._moments.update(p)
        self._sum_entropy = _add_in_order(self._sum_entropy, entropy(p))
        winners = np.argmax(p, axis=-1)  # (T_chunk, N, ...): integer counts are exact in any order
        self._votes += (winners[..., None] == np.arange(n_classes)).sum(axis=0)
        self.count += probs.shape[0]
        self._keep(probs)

    def result(self) -> ClassificationPrediction:
        self._check_started()
        t = self.count
        return ClassificationPrediction(
            mean=self._moments.mean(),
            variance=self._moments.variance(),
            expected_entropy=self._sum_entropy / t,
            votes=self._votes.copy(),
            num_samples=t,
            samples=self._samples(),
            **self.provenance,
        )


class RegressionAccumulator(_Accumulator):
    """Accumulates per-pass predicted means ``(T_chunk, N, D)`` and, for a Gaussian
    head, per-pass predicted variances of the same shape."""

    def __init__(self, *, heteroscedastic: bool = False, keep_samples: bool = False,
                 provenance: dict | None = None):
        super().__init__(keep_samples=keep_samples, provenance=provenance)
        self.heteroscedastic = heteroscedastic
        self._moments, self._sum_var, self._shape = ShiftedMoments(), None, None
        self._kept_var: list[np.ndarray] = []

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
            self._sum_var = _add_in_order(self._sum_var, variances.astype(np.float64))
        self.count += means.shape[0]
        self._keep(means)
        if self.keep_samples and variances is not None:
            self._kept_var.append(np.array(variances, copy=True))

    def result(self) -> RegressionPrediction:
        self._check_started()
        t = self.count
        return RegressionPrediction(
            mean=self._moments.mean(),
            epistemic_variance=self._moments.variance(),
            aleatoric_variance=self._sum_var / t,
            num_samples=t,
            heteroscedastic=self.heteroscedastic,
            samples=self._samples(),
            sample_variances=(np.concatenate(self._kept_var, axis=0)
                              if self.keep_samples and self._kept_var else None),
            **self.provenance,
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
