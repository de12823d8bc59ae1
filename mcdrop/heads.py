"""Turn a model's raw per-pass outputs into what the accumulators take (numpy only).

A *head* says how to read one model output, shaped ``(T, N, ...)``:

=====================  =========================================================
classification, probs  softmax rows as they are; one sigmoid unit p → [1 - p, p]
classification, logits softmax per pass (one unit: sigmoid) — probabilities are
                       averaged over passes, never logits
regression             the outputs are the per-pass means
regression, Gaussian   the last axis holds a mean half and a variance-parameter
                       half; ``heteroscedastic`` names the parameterisation
=====================  =========================================================

Supported Gaussian-head parameterisations (second half ``s`` of the last axis):

* ``"log_variance"``: σ² = exp(s)   (Kendall & Gal 2017)
* ``"variance"``: σ² = s            (must be ≥ 0)
* ``"std"``: σ² = s²
* ``"softplus_std"``: σ² = softplus(s)², σ = log(1 + exp(s))   (Lakshminarayanan et al. 2017)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mcdrop._validation import check_choice, invalid
from mcdrop.accumulators import ClassificationAccumulator, RegressionAccumulator
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

__all__ = ["Head", "ClassificationHead", "RegressionHead", "HETEROSCEDASTIC", "TASKS", "OUTPUTS"]

TASKS = ("classification", "regression")
OUTPUTS = ("probs", "logits")
HETEROSCEDASTIC = ("log_variance", "variance", "std", "softplus_std")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


@dataclasses.dataclass(frozen=True)
class Head:
    """How to read one model output.

    ``Head(task, outputs, heteroscedastic)`` gives the head type of the task — a
    :class:`ClassificationHead` or a :class:`RegressionHead` — which carries the behaviour: what a
    pass holds, the accumulator and what it keeps by default. Callers never branch on the task string.
    """

    task: str
    outputs: str | None = None  # classification only
    heteroscedastic: str | None = None  # regression only

    def __new__(cls, task=None, outputs=None, heteroscedastic=None):
        if cls is Head:
            cls = _HEAD_TYPES.get(task, cls)
        return super().__new__(cls)

    def __post_init__(self):
        check_choice(self.task, "task", TASKS)

    #: Whether a prediction keeps the per-pass values when not asked (``return_samples=None``).
    keeps_samples_by_default = False

    def accumulator(self, *, keep_samples: bool, provenance: dict) -> "Summary":
        """The running summary of this output's passes, whose ``result()`` is its prediction."""
        raise NotImplementedError

    def update(self, accumulator, raw: np.ndarray) -> None:
        """Feed one chunk of raw per-pass outputs (T_chunk, n, ...) to ``accumulator``."""
        accumulator.update(*self._values(raw))

    def per_pass(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """What a kept sample holds per pass: class probabilities, or the predicted means and (Gaussian
        head) variances, each (T, n, ...); None where a head has no variances."""
        values = self._values(raw)
        return values[0], values[1] if len(values) > 1 else None

    def check_shape(self, raw) -> None:
        """Refuse raw outputs (T, n, ...) this head cannot read, before any statistic is computed."""

    def _values(self, raw) -> tuple:
        raise NotImplementedError


class ClassificationHead(Head):
    """A classifier's output: class probabilities, or logits turned into them per pass."""

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.outputs, "outputs", OUTPUTS)
        if self.heteroscedastic is not None:
            raise invalid("heteroscedastic", "None for a classification model (a Gaussian head is a "
                          "regression head)", self.heteroscedastic)

    def accumulator(self, *, keep_samples: bool, provenance: dict) -> "Summary":
        return Summary(ClassificationAccumulator(keep_samples=keep_samples), ClassificationPrediction,
                       {**provenance, "outputs": self.outputs})

    def check_shape(self, raw) -> None:
        if len(tuple(raw.shape)) > 3:
            raise invalid("probs", "per-pass probabilities of shape (T, N, C)", raw)

    def _values(self, raw) -> tuple:
        return (self.probabilities(raw),)

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Per-pass class probabilities (T, n, C) from raw outputs."""
        raw = np.asarray(raw)
        if raw.ndim == 2:
            raw = raw[..., None]
        if raw.shape[-1] == 1:
            p = _sigmoid(raw) if self.outputs == "logits" else raw.astype(np.float64)
            if self.outputs == "probs" and (np.any(p < -1e-6) or np.any(p > 1 + 1e-6)):
                raise invalid("outputs", "'probs' outputs in [0, 1] for a single sigmoid unit", raw,
                              detail="Pass outputs='logits' if the model returns unnormalised scores.")
            p = np.clip(p, 0.0, 1.0)
            return np.concatenate([1.0 - p, p], axis=-1)
        return _softmax(raw) if self.outputs == "logits" else raw


class RegressionHead(Head):
    """A regression output: per-pass means, or (``heteroscedastic``) a mean half and a variance half."""

    keeps_samples_by_default = True  # the predictive mixture's quantiles need the passes

    def __post_init__(self):
        super().__post_init__()
        if self.heteroscedastic is not None:
            check_choice(self.heteroscedastic, "heteroscedastic", HETEROSCEDASTIC)

    def accumulator(self, *, keep_samples: bool, provenance: dict) -> "Summary":
        return Summary(RegressionAccumulator(heteroscedastic=self.heteroscedastic is not None,
                                             keep_samples=keep_samples), RegressionPrediction, provenance)

    def check_shape(self, raw) -> None:
        shape = tuple(raw.shape)
        if self.heteroscedastic is not None and (len(shape) < 3 or shape[-1] % 2):
            raise invalid("heteroscedastic", "a model output with a mean half and a variance half (an even "
                          "number of units on the last axis)", raw)

    def _values(self, raw) -> tuple:
        return self.gaussian(raw)

    def gaussian(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-pass means and (for a Gaussian head) variances, each (T, n, D)."""
        raw = np.asarray(raw)
        if raw.ndim == 2:
            raw = raw[..., None]
        if self.heteroscedastic is None:
            return raw, None
        if raw.shape[-1] % 2:
            raise invalid("heteroscedastic", "a model output with a mean half and a variance half (an even "
                          "number of units on the last axis)", raw)
        d = raw.shape[-1] // 2
        mean, s = raw[..., :d], raw[..., d:].astype(np.float64)
        if self.heteroscedastic == "log_variance":
            var = np.exp(s)
        elif self.heteroscedastic == "variance":
            if np.any(s < 0):
                raise invalid("heteroscedastic", "'variance' outputs >= 0 (use 'log_variance' or "
                              "'softplus_std' for unconstrained outputs)", self.heteroscedastic)
            var = s
        elif self.heteroscedastic == "std":
            var = s * s
        else:
            var = np.logaddexp(0.0, s) ** 2
        return mean, var


_HEAD_TYPES = {"classification": ClassificationHead, "regression": RegressionHead}


class Summary:
    """An accumulator and the provenance its prediction carries: what the engine feeds pass chunk by pass
    chunk (``update``) and reads as a prediction (``result``). The accumulator returns plain statistics;
    the prediction type is built from them here, one layer up."""

    def __init__(self, accumulator, prediction_type, provenance: dict):
        self.accumulator = accumulator
        self.prediction_type = prediction_type
        self.provenance = dict(provenance)

    def update(self, *arrays: np.ndarray) -> None:
        self.accumulator.update(*arrays)

    def merge(self, block) -> None:
        """Add a block of passes reduced on the device (:class:`~mcdrop.accumulators.PassBlock`)."""
        self.accumulator.merge(block)

    def keep(self, samples: np.ndarray, variances: np.ndarray | None = None) -> None:
        """Keep one chunk of per-pass values for the prediction's ``samples`` (when asked)."""
        self.accumulator.keep(samples, variances)

    @property
    def keep_samples(self) -> bool:
        return self.accumulator.keep_samples

    def result(self):
        """The prediction of the passes fed so far."""
        return self.prediction_type.from_statistics(self.accumulator.result(), **self.provenance)
