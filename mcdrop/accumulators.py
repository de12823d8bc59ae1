"""Running sums over Monte Carlo passes, fed chunk by chunk (numpy only).

The engine hands each chunk of per-pass outputs, shaped ``(T_chunk, N, ...)``, to an
accumulator; the accumulator adds the passes into float64 sums strictly in pass
order, ``((s + x_0) + x_1) + ...``, continuing from the running sum. The sums are
therefore bit-identical whatever the pass-chunk size (a chunk's own ``sum(axis=0)``
added to the running sum would associate differently).

Memory is O(N·C) unless samples are kept.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from mcdrop._validation import PROB_ATOL, invalid
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

__all__ = ["ClassificationAccumulator", "RegressionAccumulator", "entropy", "nonfinite_rows"]


def _add_in_order(running: np.ndarray | None, chunk: np.ndarray) -> np.ndarray:
    """``running + chunk[0] + chunk[1] + ...``, left to right: a cumulative sum is sequential by
    definition (a plain ``sum`` may pair terms, depending on the array's layout). The first chunk
    starts from nothing (``0 + x`` is ``x`` exactly, so skipping it changes no bit)."""
    if running is None:
        return np.cumsum(chunk, axis=0)[-1]
    return np.cumsum(np.concatenate([running[None], chunk], axis=0), axis=0)[-1]


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

    Keeps: sum of p, sum of p², sum of per-pass entropies, vote counts of the
    per-pass argmax — everything :class:`~mcdrop.predictive.ClassificationPrediction` needs.
    """

    def __init__(self, *, keep_samples: bool = False, provenance: dict | None = None, validate: bool = True):
        super().__init__(keep_samples=keep_samples, provenance=provenance)
        self.validate = validate
        self._sum = self._sum_sq = self._sum_entropy = self._votes = None

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
        self._sum = _add_in_order(self._sum, p)
        self._sum_sq = _add_in_order(self._sum_sq, p * p)
        self._sum_entropy = _add_in_order(self._sum_entropy, entropy(p))
        winners = np.argmax(p, axis=-1)  # (T_chunk, N, ...): integer counts are exact in any order
        self._votes += (winners[..., None] == np.arange(n_classes)).sum(axis=0)
        self.count += probs.shape[0]
        self._keep(probs)

    def result(self) -> ClassificationPrediction:
        self._check_started()
        t = self.count
        mean = self._sum / t
        variance = np.maximum(self._sum_sq / t - mean * mean, 0.0)
        return ClassificationPrediction(
            mean=mean,
            variance=variance,
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
        self._sum = self._sum_sq = self._sum_var = self._shape = None
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
        m = means.astype(np.float64)
        self._sum = _add_in_order(self._sum, m)
        self._sum_sq = _add_in_order(self._sum_sq, m * m)
        if variances is not None:
            self._sum_var = _add_in_order(self._sum_var, variances.astype(np.float64))
        self.count += means.shape[0]
        self._keep(means)
        if self.keep_samples and variances is not None:
            self._kept_var.append(np.array(variances, copy=True))

    def result(self) -> RegressionPrediction:
        self._check_started()
        t = self.count
        mean = self._sum / t
        return RegressionPrediction(
            mean=mean,
            epistemic_variance=np.maximum(self._sum_sq / t - mean * mean, 0.0),
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
    outputs = np.asarray(outputs)
    other = tuple(i for i in range(outputs.ndim) if i != 1)
    return int(np.sum(np.any(~np.isfinite(outputs), axis=other)))


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
