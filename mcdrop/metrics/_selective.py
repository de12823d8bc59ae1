r"""Selective prediction: how the error rate falls as the least confident predictions are abstained on.

Geifman & El-Yaniv (2017), *Selective classification for deep neural networks*, NeurIPS; the excess AURC
is from Geifman, Uziel & El-Yaniv (2019), *Bias-reduced uncertainty estimation for deep neural
classifiers*, ICLR.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mcdrop._validation import check_same_length, invalid
from mcdrop.metrics._common import HIGHER, LOWER, NEITHER, better, binary_labels, labels_and_probs, uncertainty_of
from mcdrop.metrics._ranking import auroc, average_precision

__all__ = [
    "RiskCoverageCurve",
    "risk_coverage_curve",
    "aurc",
    "excess_aurc",
    "uncertainty_auroc",
    "uncertainty_aupr",
]


class RiskCoverageCurve(NamedTuple):
    """The selective risk when keeping the k most confident rows, k = 1..N."""

    coverage: np.ndarray  # (N,) k / N
    risk: np.ndarray  # (N,) error rate among the k kept rows (expected over random tie order)
    threshold: np.ndarray  # (N,) the confidence (or uncertainty) of the k-th kept row


def _errors_and_confidence(y_true, probs, uncertainty, measure=None):
    labels, probs_arr = labels_and_probs(y_true, probs)
    errors = (np.argmax(probs_arr, axis=1) != labels).astype(np.float64)
    if uncertainty is None:
        return errors, probs_arr.max(axis=1), False
    u = uncertainty_of(uncertainty, "uncertainty", measure)
    check_same_length(y_true=labels, uncertainty=u)
    return errors, -u, True


def _risk_curve(errors: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = errors.size
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    err = errors[order]
    # tie groups: within a group the order is arbitrary, so take the expected cumulative error count
    starts = np.r_[0, np.nonzero(np.diff(conf))[0] + 1]
    sizes = np.diff(np.r_[starts, n])
    group_err = np.add.reduceat(err, starts)
    before = np.r_[0.0, np.cumsum(group_err)[:-1]]
    position = np.arange(n) - np.repeat(starts, sizes) + 1  # 1-based position within its group
    cum_err = np.repeat(before, sizes) + position * np.repeat(group_err / sizes, sizes)
    kept = np.arange(1, n + 1)
    return kept / n, cum_err / kept, conf


@better(NEITHER)
def risk_coverage_curve(y_true: Any, probs: Any, *, uncertainty: Any = None,
                        measure: str | None = None) -> RiskCoverageCurve:
    r"""Selective risk against coverage, rows taken most confident first (Geifman & El-Yaniv, 2017).

    Sort rows by decreasing confidence :math:`\hat p_{(1)} \ge \dots \ge \hat p_{(N)}`; keeping the first k
    gives coverage :math:`k/N` and selective risk

    .. math::

        r_k = \frac1k \sum_{j=1}^k \mathbb 1\big[\hat y_{(j)} \ne y_{(j)}\big].

    Rows of equal confidence are kept in an arbitrary order, so within a tie the cumulative error count
    is replaced by its expectation (linear within the tie): the curve and :func:`aurc` then do not depend
    on row order.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        Integer class labels.
    probs : array-like of shape (N, C) or ClassificationPrediction
        Predicted class probabilities; their argmax is the prediction.
    uncertainty : array-like of shape (N,) or ClassificationPrediction, optional
        Rank by this instead (lowest uncertainty first), e.g. mutual information. Default: the
        top-label confidence.
    measure : str, optional
        Which statistic of a prediction passed as ``uncertainty``: ``"entropy"`` (default),
        ``"mutual_information"``, ``"expected_entropy"`` or ``"variation_ratio"``.

    Returns
    -------
    RiskCoverageCurve
        ``coverage`` (N,), ``risk`` (N,), ``threshold`` (N,): the confidence of the k-th kept row (or
        its uncertainty when ``uncertainty`` is given).

    Examples
    --------
    >>> curve = risk_coverage_curve([0, 1, 0], [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    >>> curve.risk.round(3).tolist()
    [0.0, 0.5, 0.333]
    """
    errors, confidence, from_uncertainty = _errors_and_confidence(y_true, probs, uncertainty, measure)
    coverage, risk, threshold = _risk_curve(errors, confidence)
    return RiskCoverageCurve(coverage, risk, -threshold if from_uncertainty else threshold)


@better(LOWER)
def aurc(y_true: Any, probs: Any, *, uncertainty: Any = None, measure: str | None = None) -> float:
    r"""Area under the risk–coverage curve (lower is better).

    .. math::

        \mathrm{AURC} = \frac1N \sum_{k=1}^N r_k

    with :math:`r_k` the selective risk of :func:`risk_coverage_curve`.

    Examples
    --------
    >>> round(aurc([0, 1, 0], [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]), 4)
    0.2778
    """
    errors, confidence, _ = _errors_and_confidence(y_true, probs, uncertainty, measure)
    return float(np.mean(_risk_curve(errors, confidence)[1]))


@better(LOWER)
def excess_aurc(y_true: Any, probs: Any, *, uncertainty: Any = None, measure: str | None = None) -> float:
    r"""AURC minus the AURC of the ideal ranking of the same predictions (errors last); 0 is perfect.

    With :math:`E` errors among :math:`N` rows the ideal ranking has :math:`r^*_k = \max(0, k - N + E)/k`, so

    .. math::

        \mathrm{E\text{-}AURC} = \mathrm{AURC} - \frac1N \sum_{k=1}^N \frac{\max(0,\, k - N + E)}{k}

    (Geifman, Uziel & El-Yaniv, 2019, who use the continuous approximation
    :math:`r + (1 - r)\log(1 - r)` of the second term; this is its exact finite form).

    Examples
    --------
    >>> round(excess_aurc([0, 1, 0], [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]), 4)
    0.1667
    """
    errors, confidence, _ = _errors_and_confidence(y_true, probs, uncertainty, measure)
    n = errors.size
    k = np.arange(1, n + 1)
    optimal = np.maximum(0.0, k - (n - errors.sum())) / k
    return float(np.mean(_risk_curve(errors, confidence)[1]) - np.mean(optimal))


def _error_labels(is_error, uncertainty, measure):
    errors = binary_labels(is_error, "is_error")
    u = uncertainty_of(uncertainty, "uncertainty", measure)
    check_same_length(is_error=errors, uncertainty=u)
    if errors.all() or not errors.any():
        raise invalid("is_error", "both errors and correct predictions", errors,
                      detail=f"All {errors.size} row(s) are {'errors' if errors.all() else 'correct'}.")
    return errors, u


@better(HIGHER)
def uncertainty_auroc(is_error: Any, uncertainty: Any, *, measure: str | None = None) -> float:
    r"""AUROC of uncertainty as a detector of the model's own errors (higher is better, 0.5 is chance).

    .. math::

        \mathrm{AUROC} = P\big(u_i > u_j \mid i \text{ wrong}, j \text{ right}\big)
        + \tfrac12 P\big(u_i = u_j \mid i \text{ wrong}, j \text{ right}\big)

    Parameters
    ----------
    is_error : array-like of shape (N,)
        Booleans (or 0/1): whether each prediction is wrong. Both values must occur.
    uncertainty : array-like of shape (N,) or prediction
        Per-row uncertainty; for a prediction, its ``measure``.
    measure : str, optional
        Statistic read from a prediction (default entropy / total variance).

    Examples
    --------
    >>> uncertainty_auroc([True, False, False], [0.9, 0.1, 0.95])
    0.5
    """
    errors, u = _error_labels(is_error, uncertainty, measure)
    return auroc(u, errors)


@better(HIGHER)
def uncertainty_aupr(is_error: Any, uncertainty: Any, *, measure: str | None = None) -> float:
    r"""Average precision of uncertainty as a detector of errors (errors are the positive class).

    .. math::

        \mathrm{AP} = \sum_k (R_k - R_{k-1})\, P_k

    over the distinct thresholds in decreasing order, as scikit-learn's ``average_precision_score``.

    Examples
    --------
    >>> uncertainty_aupr([True, False, False], [0.9, 0.1, 0.95])
    0.5
    """
    errors, u = _error_labels(is_error, uncertainty, measure)
    return average_precision(u, errors)
