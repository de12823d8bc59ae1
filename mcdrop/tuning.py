r"""Choosing the dropout rate used at inference on held-out data.

:func:`tune_rate` scores each candidate rate (or a scale on every trained rate) by a proper scoring
rule on validation data, with common random numbers: every candidate runs with the same seed, so the
uniform draws behind the masks are shared and a unit dropped at rate :math:`r` is dropped at every
higher rate. Differences between candidates are then differences of the rate, not of the draws.

This module holds no TensorFlow: it calls :class:`~mcdrop.MCDropout`, imported on first use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from mcdrop import metrics as _metrics
from mcdrop._validation import check_float, check_int, invalid
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

__all__ = ["tune_rate", "RateTuning", "RateCurve", "METRICS"]


def _gaussian_nll(y, pred) -> float:
    if np.any(pred.variance <= 0):
        return math.inf  # a point mass has no finite density at the target
    return _metrics.gaussian_nll(y, pred)


def _rmse(y, pred) -> float:
    return _metrics.rmse(y, pred.mean)


_gaussian_nll.direction = _metrics.gaussian_nll.direction
_rmse.direction = _metrics.rmse.direction

#: The named scores of each prediction type, by name (its ``task``).
_SCORES = {
    ClassificationPrediction.task: {"nll": _metrics.negative_log_likelihood, "brier": _metrics.brier_score,
                                    "ece": _metrics.expected_calibration_error},
    RegressionPrediction.task: {"nll": _gaussian_nll, "crps": _metrics.crps_gaussian, "rmse": _rmse},
}
#: The named metrics per task; every one is lower-is-better (its ``direction``).
METRICS = {task: tuple(scores) for task, scores in _SCORES.items()}


class RateCurve(NamedTuple):
    """Plot-ready: ``plt.plot(curve.values, curve.scores)``."""

    values: np.ndarray  # (K,) the candidate rates (or scales), ascending
    scores: np.ndarray  # (K,) the metric at each, lower is better


@dataclasses.dataclass(frozen=True, eq=False)
class RateTuning:
    """The outcome of :func:`tune_rate`.

    Attributes
    ----------
    values : ndarray of shape (K,)
        The candidates, ascending: rates in [0, 1), or scales on the trained rates.
    scores : ndarray of shape (K,)
        The metric of each candidate (lower is better; ``inf`` where it is infinite, e.g. the
        Gaussian NLL of a zero predictive variance).
    kind : {"rate", "scale"}
    metric : str
        The metric's name (a callable's ``__name__``).
    num_samples : int
    seed : int
    """

    values: np.ndarray
    scores: np.ndarray
    kind: str
    metric: str
    num_samples: int
    seed: int

    @property
    def best_index(self) -> int:
        """Index of the lowest score (the smallest candidate among ties)."""
        return int(np.argmin(self.scores))

    @property
    def best(self) -> float:
        """The best candidate: the rate (or scale) to pass on."""
        return float(self.values[self.best_index])

    @property
    def best_score(self) -> float:
        return float(self.scores[self.best_index])

    @property
    def curve(self) -> RateCurve:
        return RateCurve(self.values.copy(), self.scores.copy())

    def table(self) -> str:
        """A plain-text table, the best row marked."""
        from mcdrop._text import format_table

        rows = [[float(v), float(s), "*" if i == self.best_index else ""]
                for i, (v, s) in enumerate(zip(self.values, self.scores))]
        return format_table([self.kind, self.metric, "best"], rows,
                            title=f"{self.metric} by dropout {self.kind} (T={self.num_samples}, seed={self.seed})")

    def __str__(self) -> str:
        return self.table()


def _score(metric, y, pred) -> float:
    if callable(metric):
        return float(metric(y, pred))
    return float(_SCORES[pred.task][metric](y, pred))


def _scaled_rates(model, scale: float) -> dict:
    """``{layer name: scale * trained rate}`` for every stochastic layer of ``model``."""
    from mcdrop.engine.view import build_view

    view = build_view(model)
    table = {}
    for layer in view.leaves:
        if hasattr(layer, "rate"):
            table[layer.name] = float(layer.rate) * scale
    for rnn, cells in ((r, [c for c in view.cells if c in _cells_of(r)]) for r in view.rnns):
        trained = {float(c.dropout) for c in cells if c.dropout > 0} | {
            float(c.recurrent_dropout) for c in cells if c.recurrent_dropout > 0}
        if len(trained) > 1:
            raise invalid("scales", "rates instead, for a model whose RNN layer has different dropout and "
                          f"recurrent_dropout rates ({rnn.name}: {sorted(trained)})", scale)
        table[rnn.name] = trained.pop() * scale
    bad = {name: r for name, r in table.items() if r >= 1}
    if bad:
        raise invalid("scales", "scales that keep every rate below 1", scale,
                      detail=f"It gives {', '.join(f'{k}: {v:.3g}' for k, v in bad.items())}.")
    return table


def _cells_of(rnn) -> list:
    cell = rnn.cell
    return list(getattr(cell, "cells", [cell]))


def tune_rate(model, x_val, y_val, *, rates: Sequence[float] | None = None, scales: Sequence[float] | None = None,
              metric: str | Callable[[Any, Any], float] = "nll", num_samples: int = 50, seed: int = 0,
              **options) -> RateTuning:
    r"""Score candidate inference-time dropout rates on validation data; return the best and the curve.

    Each candidate runs ``MCDropout(model, num_samples, seed, rate=...)`` with the *same* seed (common
    random numbers) and is scored by ``metric`` against ``y_val``; the best has the lowest score.
    For a proper scoring rule (the NLL, the Brier score, the CRPS) the expected score is lowest when
    the predictive distribution is the data's, so the tuned rate is the one whose spread the
    validation data supports:

    .. math::

        r^\star = \arg\min_{r \in \text{candidates}} \frac1N \sum_i S\big(\hat p_r(\cdot \mid x_i), y_i\big)

    Parameters
    ----------
    model : keras.Model
        Read, never modified.
    x_val : array-like of shape (N, ...)
    y_val : array-like of shape (N,) (labels) or (N, D) (regression targets)
    rates : sequence of float in [0, 1), optional
        Candidate rates, each applied to every stochastic layer.
    scales : sequence of float > 0, optional
        Instead: candidate factors on every trained rate (keeps their ratios). Exactly one of
        ``rates`` and ``scales``.
    metric : {"nll", "brier", "ece"} for classification, {"nll", "crps", "rmse"} for regression, or callable
        Lower is better. A callable is called as ``metric(y_val, prediction)``; one that carries a
        ``direction`` other than lower-is-better (a metric of :mod:`mcdrop.metrics` such as
        ``accuracy_score``, whose ``direction`` is +1) is refused rather than minimised. The regression NLL
        and CRPS use the moment-matched Gaussian of the prediction; a zero predictive variance
        (rate 0 without a Gaussian head) has NLL ``inf``. ECE and RMSE are not proper scores: ECE can
        favour an uninformative model, RMSE ignores the spread.
    num_samples : int, default 50
    seed : int, default 0
    **options
        Passed to :class:`~mcdrop.MCDropout` (``task``, ``outputs``, ``batch_size``, ...).

    Returns
    -------
    RateTuning
        ``best``, ``scores`` for every candidate, ``curve`` and a printable ``table()``.

    Examples
    --------
    >>> result = mcdrop.tune_rate(model, x_val, y_val, rates=[0.05, 0.1, 0.2, 0.3])  # doctest: +SKIP
    >>> mc = mcdrop.MCDropout(model, rate=result.best)                                 # doctest: +SKIP
    """
    from mcdrop.engine import MCDropout

    if (rates is None) == (scales is None):
        raise invalid("rates", "exactly one of `rates` and `scales`", rates,
                      detail=f"`scales` received {scales!r}.", error=TypeError)
    kind, given = ("rate", rates) if rates is not None else ("scale", scales)
    name = f"{kind}s"
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence | np.ndarray) or len(given) == 0:
        raise invalid(name, "a non-empty sequence of numbers", given, error=TypeError)
    if kind == "rate":
        values = [check_float(v, name, low=0.0, high=1.0, high_inclusive=False) for v in given]
    else:
        values = [check_float(v, name, low=0.0, low_inclusive=False) for v in given]
    values = np.array(sorted(set(values)))
    num_samples = check_int(num_samples, "num_samples", minimum=2)
    seed = check_int(seed, "seed", minimum=0)
    if not callable(metric) and not isinstance(metric, str):
        raise invalid("metric", "a metric name or a callable", metric, error=TypeError)
    if callable(metric) and getattr(metric, "direction", _metrics.LOWER) != _metrics.LOWER:
        way = "higher is better" if metric.direction == _metrics.HIGHER else "it is neither higher- nor lower-is-better"
        raise invalid("metric", "a lower-is-better metric (the best candidate has the lowest score)",
                      getattr(metric, "__name__", metric),
                      detail=f"Its `direction` is {metric.direction}: {way}. To maximise a score, pass "
                             "lambda y, p: -score(y, p).")
    if isinstance(metric, str) and not any(metric in names for names in METRICS.values()):
        listed = ", ".join(repr(m) for m in dict.fromkeys(m for names in METRICS.values() for m in names))
        raise invalid("metric", f"one of {listed}, or a callable", metric)
    for key in ("rate", "num_samples", "seed"):
        if key in options:
            raise invalid(key, f"no `{key}` among the engine options (tune_rate sets it)", options[key],
                          error=TypeError)
    scores = []
    for value in values:
        rate = float(value) if kind == "rate" else _scaled_rates(model, float(value))
        engine = MCDropout(model, num_samples=num_samples, seed=seed, rate=rate, **options)
        pred = engine.predict(x_val)
        if isinstance(pred, (list, dict)):
            raise invalid("model", "a single-output model", model, error=TypeError)
        if isinstance(metric, str) and metric not in METRICS[pred.task]:
            listed = ", ".join(repr(m) for m in METRICS[pred.task])
            raise invalid("metric", f"one of {listed} for {pred.task}, or a callable", metric)
        scores.append(_score(metric, y_val, pred))
    metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
    return RateTuning(values=values, scores=np.array(scores, dtype=np.float64), kind=kind, metric=metric_name,
                      num_samples=num_samples, seed=seed)
